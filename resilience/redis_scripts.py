"""The Lua scripts behind the Redis-shared limits.

Each script runs atomically inside Redis, so "check every limit, then take
from every one" cannot interleave with another worker's. Time inside them is
the Redis server's (`TIME`): every worker then measures refills on one clock,
which no worker's own clock could give.

Floats come back as strings: Redis turns a Lua number into an integer reply.

Key layout (the provider in braces, so a cluster keeps one provider on one slot):

* `{p}:requests`, `{p}:tokens`: bucket hashes, fields `level` and `stamp`;
* `{p}:pause`: server time before which the buckets grant nothing (a 429);
* ledger keys, one hash per budget period, fields `usd` and `requests`;
* `{p}:applied:<worker>`: the last batch of deferred ledger deltas applied
  from that worker, so a batch resent after a lost reply is applied once.
"""

from __future__ import annotations

from typing import Final

_PRELUDE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

-- Deferred ledger deltas (settlements, refunds). ARGV[argv_at] is the batch's
-- sequence number; a worker sends its batches in order, and `applied_key` holds
-- the last one applied, so a batch resent after a lost reply is skipped. A key
-- that has expired is not recreated: its period is over.
local function apply_deltas(applied_key, first_key, count, argv_at)
    if count == 0 then return end
    local seq = tonumber(ARGV[argv_at])
    if seq <= tonumber(redis.call('GET', applied_key) or '0') then return end
    redis.call('SET', applied_key, seq, 'EX', 172800)
    for i = 0, count - 1 do
        local key = KEYS[first_key + i]
        if redis.call('EXISTS', key) == 1 then
            redis.call('HINCRBYFLOAT', key, 'usd', ARGV[argv_at + 1 + 2 * i])
            redis.call('HINCRBY', key, 'requests', ARGV[argv_at + 2 + 2 * i])
        end
    end
end

local function totals(key)
    local h = redis.call('HMGET', key, 'usd', 'requests')
    return tonumber(h[1]) or 0, tonumber(h[2]) or 0
end

-- Checks every limit; on success charges every key and returns their new totals.
-- Returns nil (charging nothing) when a limit would be crossed.
local function charge(first_key, count, argv_at, usd, requests)
    for i = 0, count - 1 do
        local used_usd, used_requests = totals(KEYS[first_key + i])
        local usd_limit = tonumber(ARGV[argv_at + 3 * i])
        local requests_limit = tonumber(ARGV[argv_at + 3 * i + 1])
        if usd_limit and used_usd + usd > usd_limit + 1e-9 then return nil end
        if requests_limit and used_requests + requests > requests_limit then return nil end
    end
    local out = {}
    for i = 0, count - 1 do
        local key = KEYS[first_key + i]
        local new_usd = redis.call('HINCRBYFLOAT', key, 'usd', usd)
        local new_requests = redis.call('HINCRBY', key, 'requests', requests)
        redis.call('EXPIREAT', key, ARGV[argv_at + 3 * i + 2])
        out[#out + 1] = new_usd
        out[#out + 1] = tostring(new_requests)
    end
    return out
end

local function all_totals(first_key, count)
    local out = {}
    for i = 0, count - 1 do
        local used_usd, used_requests = totals(KEYS[first_key + i])
        out[#out + 1] = tostring(used_usd)
        out[#out + 1] = tostring(used_requests)
    end
    return out
end
"""

ADMIT: Final = (
    _PRELUDE
    + """
-- KEYS: requests bucket, tokens bucket, pause, applied, limit keys..., delta keys...
-- ARGV: 1 requests capacity, 2 requests rate, 3 tokens capacity, 4 tokens rate
--       (capacity 0: no such bucket), 5 units, 6 cost, 7 requests charged,
--       8 limit count, 9 delta count, 10 requests cap, 11 tokens cap (server
--       feedback, '' for none), then per limit usd, requests, expires_at
--       ('' for no limit), then the batch's sequence number and per delta usd, requests.
local n_limits, n_deltas = tonumber(ARGV[8]), tonumber(ARGV[9])
apply_deltas(KEYS[4], 5 + n_limits, n_deltas, 12 + 3 * n_limits)

local pause = tonumber(redis.call('GET', KEYS[3]) or '0')
if pause > now then return {'paused', tostring(pause - now)} end

local function level(key, capacity, rate, cap)
    local h = redis.call('HMGET', key, 'level', 'stamp')
    local lvl, stamp = tonumber(h[1]), tonumber(h[2])
    if lvl == nil then lvl, stamp = capacity, now end
    -- A 429 restarts the bucket empty at the pause's end: a ramp, not a burst.
    if pause > stamp then lvl, stamp = 0, pause end
    if now > stamp then lvl = math.min(capacity, lvl + (now - stamp) * rate) end
    if cap and cap < lvl then lvl = cap end
    return lvl
end

local buckets = {
    {KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), 1, tonumber(ARGV[10])},
    {KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[11])},
}
local wait = 0
for _, b in ipairs(buckets) do
    if b[2] > 0 then
        b[6] = level(b[1], b[2], b[3], b[5])
        if b[6] < b[4] then wait = math.max(wait, (b[4] - b[6]) / b[3]) end
    end
end
if wait > 0 then
    for _, b in ipairs(buckets) do
        if b[2] > 0 and b[5] then  -- keep the server's report, though nothing was taken
            redis.call('HSET', b[1], 'level', tostring(b[6]), 'stamp', tostring(now))
            redis.call('EXPIRE', b[1], math.ceil(b[2] / b[3]) + 60)
        end
    end
    return {'rate', tostring(wait)}
end

local charged = charge(5, n_limits, 12, tonumber(ARGV[6]), tonumber(ARGV[7]))
if charged == nil then
    local out = all_totals(5, n_limits)
    table.insert(out, 1, 'budget')
    return out
end
for _, b in ipairs(buckets) do
    if b[2] > 0 then
        redis.call('HSET', b[1], 'level', tostring(b[6] - b[4]), 'stamp', tostring(now))
        -- An idle bucket refills to full: once it could have, the key may go.
        redis.call('EXPIRE', b[1], math.ceil(b[2] / b[3]) + 60)
    end
end
table.insert(charged, 1, 'ok')
return charged
"""
)
"""Take one request and `units` tokens and reserve the budget, all or nothing."""

LEDGER_TRY_ADD: Final = (
    _PRELUDE
    + """
-- KEYS: applied, limit keys..., delta keys...
-- ARGV: 1 usd, 2 requests, 3 limit count, 4 delta count, then per limit
--       usd, requests, expires_at, then the batch sequence and per delta usd, requests.
local n_limits, n_deltas = tonumber(ARGV[3]), tonumber(ARGV[4])
apply_deltas(KEYS[1], 2 + n_limits, n_deltas, 5 + 3 * n_limits)
local charged = charge(2, n_limits, 5, tonumber(ARGV[1]), tonumber(ARGV[2]))
if charged == nil then return {'refused'} end
table.insert(charged, 1, 'ok')
return charged
"""
)
"""`LedgerStore.try_add` alone, for a budget used without the gate."""

LEDGER_TOTALS: Final = (
    _PRELUDE
    + """
-- KEYS: applied, the key to read, delta keys...
-- ARGV: 1 delta count, then the batch sequence and per delta usd, requests.
apply_deltas(KEYS[1], 3, tonumber(ARGV[1]), 2)
return all_totals(2, 1)
"""
)
"""Apply deferred deltas, then read one key's totals."""

LEDGER_FLUSH: Final = (
    _PRELUDE
    + """
-- KEYS: applied, delta keys...
-- ARGV: 1 delta count, then the batch sequence and per delta usd, requests.
apply_deltas(KEYS[1], 2, tonumber(ARGV[1]), 2)
return 'ok'
"""
)
"""Apply deferred deltas when no other script is going to carry them."""

PAUSE: Final = """
-- KEYS: pause   ARGV: 1 seconds. Extends the pause, never shortens it.
local t = redis.call('TIME')
local until_s = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_s > current then
    -- Kept two minutes past its end, so buckets last stamped before it see it.
    local keep_ms = math.ceil(tonumber(ARGV[1]) * 1000) + 120000
    redis.call('SET', KEYS[1], tostring(until_s), 'PX', keep_ms)
end
return tostring(math.max(until_s, current))
"""
"""Pause both buckets of a provider for every worker (a 429's Retry-After)."""

TRIP: Final = """
-- KEYS: trips (sorted set of worker ids by time), published marker
-- ARGV: 1 worker id, 2 window seconds, 3 quorum
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('EXPIRE', KEYS[1], math.ceil(window) + 1)
local seen = redis.call('ZCARD', KEYS[1])
if seen < tonumber(ARGV[3]) then return {seen, 0} end
-- One announcement per window, however many workers trip after the quorum.
local first = redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', math.ceil(window * 1000))
return {seen, first and 1 or 0}
"""
"""Record that this worker's breaker tripped; say whether a quorum now agrees."""
