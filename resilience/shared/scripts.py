"""The Lua scripts behind the Redis-shared limits.

Each script runs atomically inside Redis, so "check every limit, then take
from every one" cannot interleave with another worker's. Time inside them is
the Redis server's (`TIME`): every worker then measures refills on one clock,
which no worker's own clock could give.

Each script takes one argument, a JSON object (decoded by Redis's `cjson`):
encoding thirty separate arguments cost redis-py more than the script's
run. Fields: `d` deferred ledger deltas `[[usd, requests], ...]` and `s`
their batch's sequence number; `l` limits `[[usd, requests, expires_at],
...]` (-1: no limit); and for `ADMIT`, `b` the buckets `[requests capacity,
requests rate, tokens capacity, tokens rate]` (capacity 0: no such bucket),
`u` the tokens wanted, `c` the cost, `r` the requests charged, and `k` the
server-reported caps `[requests, tokens]` (-1: none). Floats come back as
strings: Redis turns a Lua number into an integer reply.

Key layout (the provider in braces: a Redis Cluster keeps all of a provider's
keys in one slot, so its scripts never cross slots):

* `{p}:requests`, `{p}:tokens`: bucket hashes, fields `level` and `stamp`;
* `{p}:pause`: server time before which the buckets grant nothing (a 429);
* `{p}:ledger:<period key>`: one hash per budget period, fields `usd` and
  `requests`;
* `{p}:applied:<worker>`: the last batch of deferred ledger deltas applied
  from that worker, so a batch resent after a lost reply is applied once.
"""

from __future__ import annotations

from typing import Final

_PRELUDE: Final = """
local a = cjson.decode(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

-- Deferred ledger deltas (settlements, refunds), from KEYS[first_key] on. A
-- worker sends its batches in order and `applied_key` holds the last one
-- applied, so a batch resent after a lost reply is skipped. A key that has
-- expired is not recreated: its period is over.
local function apply_deltas(applied_key, first_key)
    if #a.d == 0 or a.s <= tonumber(redis.call('GET', applied_key) or '0') then return end
    redis.call('SET', applied_key, a.s, 'EX', 172800)
    for i, delta in ipairs(a.d) do
        local key = KEYS[first_key + i - 1]
        if redis.call('EXISTS', key) == 1 then
            redis.call('HINCRBYFLOAT', key, 'usd', delta[1])
            redis.call('HINCRBY', key, 'requests', delta[2])
        end
    end
end

local function totals(key)
    local h = redis.call('HMGET', key, 'usd', 'requests')
    return tonumber(h[1]) or 0, tonumber(h[2]) or 0
end

-- Checks every limit of `a.l` (keys from KEYS[first_key] on); if all hold,
-- charges every key and returns their new totals, else nil, charging nothing.
local function charge(first_key, usd, requests)
    for i, limit in ipairs(a.l) do
        local used_usd, used_requests = totals(KEYS[first_key + i - 1])
        if limit[1] >= 0 and used_usd + usd > limit[1] + 1e-9 then return nil end
        if limit[2] >= 0 and used_requests + requests > limit[2] then return nil end
    end
    local out = {}
    for i, limit in ipairs(a.l) do
        local key = KEYS[first_key + i - 1]
        out[#out + 1] = redis.call('HINCRBYFLOAT', key, 'usd', usd)
        out[#out + 1] = tostring(redis.call('HINCRBY', key, 'requests', requests))
        redis.call('EXPIREAT', key, limit[3])
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
apply_deltas(KEYS[4], 5 + #a.l)
local pause = tonumber(redis.call('GET', KEYS[3]) or '0')
if pause > now then return {'paused', tostring(pause - now)} end

local function level(key, capacity, rate, cap)
    local h = redis.call('HMGET', key, 'level', 'stamp')
    local lvl, stamp = tonumber(h[1]), tonumber(h[2])
    if lvl == nil then lvl, stamp = capacity, now end
    -- A 429 restarts the bucket empty at the pause's end: a ramp, not a burst.
    if pause > stamp then lvl, stamp = 0, pause end
    if now > stamp then lvl = math.min(capacity, lvl + (now - stamp) * rate) end
    if cap >= 0 and cap < lvl then lvl = cap end
    return lvl
end

-- {key, capacity, rate, units wanted, server cap, level}
local buckets = {
    {KEYS[1], a.b[1], a.b[2], 1, a.k[1]},
    {KEYS[2], a.b[3], a.b[4], a.u, a.k[2]},
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
        if b[2] > 0 and b[5] >= 0 then  -- keep the server's report, though nothing was taken
            redis.call('HSET', b[1], 'level', tostring(b[6]), 'stamp', tostring(now))
            redis.call('EXPIRE', b[1], math.ceil(b[2] / b[3]) + 60)
        end
    end
    return {'rate', tostring(wait)}
end

local charged = charge(5, a.c, a.r)
if charged == nil then
    local out = all_totals(5, #a.l)
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
-- KEYS: applied, limit keys..., delta keys...   Fields: c usd, r requests.
apply_deltas(KEYS[1], 2 + #a.l)
local charged = charge(2, a.c, a.r)
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
apply_deltas(KEYS[1], 3)
return all_totals(2, 1)
"""
)
"""Apply deferred deltas, then read one key's totals."""

LEDGER_FLUSH: Final = (
    _PRELUDE
    + """
-- KEYS: applied, delta keys...
apply_deltas(KEYS[1], 2)
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
