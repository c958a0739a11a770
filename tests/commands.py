"""The `breakwater` command in a child process, run as a user runs it.

A child gets neither the caller's provider keys nor its log
(`keyless_environment`), so it spends nothing unless a test points it at an
emulator (`keyed_emulator`), itself `breakwater emulate` in a child.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import orjson
import pytest

ROOT: Final = Path(__file__).resolve().parent.parent
KEYS: Final = ("OPENAI_API_KEY", "LLAMA_CLOUD_API_KEY", "LLAMA_CLOUD_WEBHOOK_SECRET")
"""The provider secrets a test that must spend nothing removes from its environment."""


def keyless_environment() -> dict[str, str]:
    """This process's environment in HYBRID mode, without provider keys or BREAKWATER_LOG."""
    env = {k: v for k, v in os.environ.items() if k not in KEYS and k != "BREAKWATER_LOG"}
    env.update(PYTHONPATH=str(ROOT), SERVICE_MODE="hybrid")
    return env


def child_environment(**extra: str) -> dict[str, str]:
    """This process's environment without provider keys, Breakwater settings or a mode,
    plus `extra`: a child spends only what `extra` points it at."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in KEYS and not k.startswith("BREAKWATER_") and k != "SERVICE_MODE"
    }
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


def wait_for(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Poll `condition` every 50 ms until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def breakwater(
    *args: str, env: Mapping[str, str], stderr: int | None = None
) -> subprocess.Popen[str]:
    """`breakwater ARGS...` started from this checkout, its standard output piped as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "simulations.cli", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )


def emulator_urls(emulator: subprocess.Popen[str]) -> dict[str, str]:
    """The URLs `breakwater emulate` prints at start: control base, OpenAI, LlamaParse."""
    assert emulator.stdout is not None
    urls: dict[str, str] = {}
    for line in emulator.stdout:
        if line.startswith("Breakwater emulators on "):
            urls["base"] = line.split()[3]
        elif "base URL:" in line:
            name, url = line.split("base URL:")
            urls[name.strip()] = url.split()[0]
        if len(urls) == 3:
            return urls
    raise AssertionError(f"the emulator exited early with {emulator.wait()}")


def emulator_stats(base_url: str) -> dict[str, Any]:
    """What `breakwater emulate` at `base_url` says it answered (`GET /_control/stats`)."""
    with urllib.request.urlopen(f"{base_url}/_control/stats", timeout=5) as answer:
        stats: dict[str, Any] = orjson.loads(answer.read())
    return stats


def emulator_root() -> str:
    """The root of the emulator `keyed_emulator` pointed LLAMA_CLOUD_BASE_URL at."""
    url = urllib.parse.urlsplit(os.environ["LLAMA_CLOUD_BASE_URL"])
    return f"{url.scheme}://{url.netloc}"


def llamaparse_requests(stats: dict[str, Any]) -> int:
    """Requests LlamaParse's routes answered, whatever the status: what a ledger counts."""
    return sum(
        sum(by_status.values())
        for label, by_status in stats["requests"].items()
        if "/api/v" in label
    )


@contextmanager
def keyed_emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`breakwater emulate` in its own process, with keys and base URLs pointing at it."""
    emulator = breakwater("emulate", "--port", "0", env=keyless_environment())
    try:
        urls = emulator_urls(emulator)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("OPENAI_BASE_URL", urls["OpenAI"])
        monkeypatch.setenv("LLAMA_CLOUD_API_KEY", "llx-test")
        monkeypatch.setenv("LLAMA_CLOUD_BASE_URL", urls["LlamaParse"])
        yield
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)


def serve_banner(server: subprocess.Popen[str]) -> list[str]:
    """`breakwater serve`'s start lines, up to and including "Serving on URL ..."."""
    assert server.stdout is not None
    lines = []
    for line in server.stdout:
        lines.append(line)
        if line.startswith("Serving on "):
            break
    return lines
