"""The throwaway Redis server: what the append-only file keeps across a restart.

The budget ledger will rely on this (the README asks for Redis with AOF), so
the fixture's server must prove it: a key written before `stop()` is read
back after `start()`, with no RDB snapshot to fall back on.
"""

from __future__ import annotations

import pytest
import redis

from tests.redis_server import REQUIRE_VARIABLE, URL_VARIABLE, GivenRedis, RedisServer


@pytest.mark.redis
def test_a_key_written_before_a_restart_is_read_after_it(
    redis_server: RedisServer, redis_url: str
) -> None:
    assert redis_url == redis_server.url
    assert redis_url.endswith(f":{redis_server.port}/0")
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0  # redis_url flushed whatever earlier tests left
        assert client.set("breakwater:probe", "kept")

    redis_server.stop()
    with pytest.raises(redis.ConnectionError), redis.Redis.from_url(redis_url) as client:
        client.ping()

    redis_server.start()
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping() is True
        assert client.get("breakwater:probe") == b"kept"
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("save") == {"save": ""}


def test_a_named_server_cannot_be_restarted_so_the_test_skips(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(REQUIRE_VARIABLE, raising=False)
    server = GivenRedis("redis://cache.internal:6380/2")
    assert server.port == 6380
    with pytest.raises(pytest.skip.Exception, match=URL_VARIABLE):
        server.stop()


def test_a_named_server_that_cannot_restart_fails_a_run_that_requires_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(REQUIRE_VARIABLE, "1")
    with pytest.raises(pytest.fail.Exception, match="the Redis tests did not run"):
        GivenRedis("redis://cache.internal/0").stop()
