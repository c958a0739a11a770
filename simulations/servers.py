"""Throwaway PostgreSQL and Redis servers, started from the installed binaries.

The store tests, the scale-out tests and `nox -s bench`'s scaling run need
real servers, never fakes. These classes start one in a temporary directory
on 127.0.0.1 at a free port and delete it afterwards; `tests/postgres.py`
and `tests/redis_server.py` wrap them in pytest fixtures.

* PostgreSQL: `initdb`, then `pg_ctl start`, its unix socket in the same
  directory, fsync off (the directory is thrown away). PostgreSQL refuses
  to run as root, so as root the binaries run as `nobody` through
  `runuser`, and the directory is handed to that user.
* Redis: append-only with `appendfsync always` and no RDB snapshots, the
  way the README asks users to run it, with a fixed port and directory so
  it can be stopped and started again and read back only what its
  append-only file kept.

These wait on real processes, so they use real time (`time.sleep`,
`time.monotonic`), never the loop clock.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final

HOST: Final = "127.0.0.1"
UNPRIVILEGED_USER: Final = "nobody"
READY_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 30.0
POLL_S: Final = 0.05
LOG_TAIL_LINES: Final = 30


class ServerFailed(RuntimeError):
    """A server's tools failed, or it did not answer or stop in time; the message
    carries their output or its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((HOST, port)) == 0


# -- PostgreSQL -----------------------------------------------------------------


def find_postgres_binaries() -> Path | None:
    """The directory holding `initdb` and `pg_ctl`: beside `pg_ctl` on PATH, else the
    newest /usr/lib/postgresql/N/bin (Debian keeps them off PATH)."""
    candidates = []
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
        reverse=True,
    )
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


class PostgresServer:
    """A PostgreSQL cluster in a temporary directory, stopped and deleted by `stop`."""

    def __init__(self, binaries: Path) -> None:
        self._binaries = binaries
        self._root = Path(tempfile.mkdtemp(prefix="breakwater-pg-"))
        self._data = self._root / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise ServerFailed("running as root and runuser is missing")
            user = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(self._root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", UNPRIVILEGED_USER, "--"]

    def start(self) -> str:
        """initdb, start, and return the admin URL."""
        port = free_port()
        self._run(
            "initdb",
            "-D",
            str(self._data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        options = (
            f"-h {HOST} -p {port} -k {shlex.quote(str(self._root))}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        log = self._root / "server.log"
        self._run(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            "30",
            "-D",
            str(self._data),
            "-l",
            str(log),
            "-o",
            options,
        )
        return f"postgresql://postgres@{HOST}:{port}/postgres"

    def stop(self) -> None:
        try:
            if (self._data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-m", "immediate", "-D", str(self._data))
        finally:
            shutil.rmtree(self._root, ignore_errors=True)

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as, str(self._binaries / tool), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if done.returncode != 0:
            raise ServerFailed(f"{tool} exited {done.returncode}: {done.stdout}{done.stderr}")


# -- Redis ----------------------------------------------------------------------


def find_redis_binary() -> Path | None:
    """`redis-server` on PATH (Debian's package puts it in /usr/bin)."""
    found = shutil.which("redis-server")
    return None if found is None else Path(found)


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
        self.port = free_port()
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
        deadline = time.monotonic() + READY_TIMEOUT_S  # clock-ok: a real process
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
        deadline = time.monotonic() + STOP_TIMEOUT_S  # clock-ok: a real process
        while port_open(self.port):
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
            with socket.create_connection((HOST, self.port), timeout=1.0) as connection:
                connection.sendall(b"PING\r\n")  # an inline command; no client library needed
                return connection.recv(64).startswith(b"+PONG")  # not "-LOADING ..."
        except OSError:
            return False

    def _failed(self, reason: str) -> ServerFailed:
        lines = self._log.read_text(errors="replace").splitlines() if self._log.exists() else []
        tail = "\n".join(lines[-LOG_TAIL_LINES:])
        return ServerFailed(f"{reason}; {self._log}:\n{tail}")
