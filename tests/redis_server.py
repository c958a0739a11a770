"""A throwaway Redis server for the tests, and a clean database per test.

`redis_server` (session-scoped) is the server: the one BREAKWATER_TEST_REDIS_URL
names, else one started here from the installed `redis-server` on 127.0.0.1 at
a free port, its data directory and log in a temporary directory. It runs
append-only with `appendfsync always` and no RDB snapshots, the way the README
asks users to run it: the budget ledger must survive a Redis restart, so the
tests restart it (`stop()`, then `start()` on the same port and directory) and
read back only what the append-only file kept. A named server cannot be
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
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final, NoReturn, Protocol
from urllib.parse import urlsplit

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.postgres import _free_port

URL_VARIABLE: Final = "BREAKWATER_TEST_REDIS_URL"
REQUIRE_VARIABLE: Final = "BREAKWATER_REQUIRE_REDIS"
HOST: Final = "127.0.0.1"
READY_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 30.0
POLL_S: Final = 0.05
LOG_TAIL_LINES: Final = 30


def find_binary() -> Path | None:
    """`redis-server` on PATH (Debian's package puts it in /usr/bin)."""
    found = shutil.which("redis-server")
    return None if found is None else Path(found)


class ServerFailed(RuntimeError):
    """redis-server exited, or did not answer or stop in time; the message carries its log."""


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


class ThrowawayRedis:
    """A `redis-server` process with a fixed port and data directory, so it can be restarted.

    `start` and `stop` do nothing when the server is already up or down: a
    test that stopped it and failed does not break the tests after it.
    """

    def __init__(self, binary: Path) -> None:
        self._binary = binary
        self._root = Path(tempfile.mkdtemp(prefix="breakwater-redis-"))
        self._log = self._root / "server.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.port = _free_port()
        self.url = f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        command = [
            str(self._binary),
            *("--port", str(self.port), "--bind", HOST, "--dir", str(self._root)),
            *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
            *("--daemonize", "no"),
        ]
        # Appending keeps every run's output, so a failed restart shows what came before.
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._answers_ping():
            if self._process.poll() is not None:
                raise self._failed(f"redis-server exited {self._process.returncode}")
            if time.monotonic() > deadline:
                self._process.kill()
                self._process.wait()
                raise self._failed(f"redis-server did not answer PING in {READY_TIMEOUT_S:.0f} s")
            time.sleep(POLL_S)

    def stop(self) -> None:
        """SIGTERM: Redis shuts down cleanly, and with no save points writes no snapshot."""
        if self._process is None:
            return
        process, self._process = self._process, None
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise self._failed(f"redis-server ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s") from None
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _port_open(self.port):
            if time.monotonic() > deadline:
                raise self._failed(f"port {self.port} still open after redis-server exited")
            time.sleep(POLL_S)

    def close(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self._root, ignore_errors=True)

    def _answers_ping(self) -> bool:
        try:
            # The client's own retries would back off for seconds on each refused connection.
            once = Retry(NoBackoff(), 0)
            with redis.Redis(host=HOST, port=self.port, socket_timeout=1.0, retry=once) as client:
                return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False  # BusyLoadingError, while the append-only file loads, is one too

    def _failed(self, reason: str) -> ServerFailed:
        lines = self._log.read_text(errors="replace").splitlines() if self._log.exists() else []
        tail = "\n".join(lines[-LOG_TAIL_LINES:])
        return ServerFailed(f"{reason}; {self._log}:\n{tail}")


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


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((HOST, port)) == 0


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_VARIABLE}=1: the Redis tests did not run")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A Redis server for this test session (see the module)."""
    given = os.environ.get(URL_VARIABLE, "").strip()
    if given:
        yield GivenRedis(given)
        return
    binary = find_binary()
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
    print(os.environ.get(URL_VARIABLE, "").strip() or find_binary() or "")
