"""A throwaway Redis server for the tests, and a clean database per test.

`redis_server` (session-scoped) is the server: the one BREAKWATER_TEST_REDIS_URL
names, else one started here from the installed `redis-server`
(`simulations.servers.ThrowawayRedis`: append-only, `appendfsync always`). The
budget ledger must survive a Redis restart, so the tests restart it (`stop()`,
then `start()` on the same port and directory) and read back only what the
append-only file kept. A named server cannot be
restarted from here, so its `stop()` skips the test (fails it under
BREAKWATER_REQUIRE_REDIS=1).

`redis_url` (per test) brings the server back if an earlier test left it
stopped, then empties it with FLUSHALL: never name a server whose data matters.

When no server can be had, the tests that need one skip ("Redis not
installed"), or fail with BREAKWATER_REQUIRE_REDIS=1 (what `nox -s integration`
and `.ci/run` set): a run meant to cover Redis must never pass without it.
`python -m tests.redis_server` prints the named URL or the binary's path, or
nothing, for the nox session to check before it starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Final, NoReturn, Protocol
from urllib.parse import urlsplit

import pytest
import redis

from simulations.servers import ServerFailed, ThrowawayRedis, find_redis_binary
from tests.servers import unavailable

URL_VARIABLE: Final = "BREAKWATER_TEST_REDIS_URL"
REQUIRE_VARIABLE: Final = "BREAKWATER_REQUIRE_REDIS"


class RedisServer(Protocol):
    """What the `redis_server` fixture yields."""

    @property
    def url(self) -> str: ...

    @property
    def port(self) -> int: ...

    def start(self) -> None:
        """Bring the server up (at once if it already is) and wait until it answers PING."""
        ...

    def stop(self) -> None:
        """Shut the server down and wait until its port is closed."""
        ...


class GivenRedis:
    """The server BREAKWATER_TEST_REDIS_URL names: used as it is, never restarted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.port = urlsplit(url).port or 6379

    def start(self) -> None:
        """Nothing to do: a named server is up, or its tests fail to connect and say so."""

    def stop(self) -> None:
        _unavailable(
            f"restarting Redis needs the throwaway server, and {URL_VARIABLE} names another; "
            f"unset it to run this test"
        )


def _unavailable(reason: str) -> NoReturn:
    unavailable(reason, require_variable=REQUIRE_VARIABLE, server="Redis")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A Redis server for this test session (see the module)."""
    given = os.environ.get(URL_VARIABLE, "").strip()
    if given:
        yield GivenRedis(given)
        return
    binary = find_redis_binary()
    if binary is None:
        _unavailable("Redis not installed")
    server = ThrowawayRedis(binary)
    try:
        try:
            server.start()
        except (ServerFailed, OSError) as exc:
            _unavailable(f"Redis could not start: {exc}")
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The server's URL, running and emptied (FLUSHALL) for this test."""
    redis_server.start()
    with redis.Redis.from_url(redis_server.url, socket_timeout=5.0) as client:
        client.flushall()
    return redis_server.url


if __name__ == "__main__":
    print(os.environ.get(URL_VARIABLE, "").strip() or find_redis_binary() or "")
