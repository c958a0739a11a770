"""Breakwater's logging as a library: silent until configured, and only ever adding handlers.

What a host application should expect, as with any library that follows
loguru's advice: importing Breakwater writes nothing anywhere, its own
handlers included, until it calls `configure_logging` (or enables the
packages itself with `logger.enable`); `configure_logging` adds one JSON-lines
sink and leaves the host's handlers in place; `close_logging` takes away only
that sink and quiets Breakwater again.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from loguru import logger

from resilience.breaker import Breaker
from resilience.events import close_logging, configure_logging, emit

ROOT = Path(__file__).resolve().parent.parent


def run_fresh(code: str) -> dict[str, Any]:
    """Run `code` in a new interpreter, where nothing has configured logging yet."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    document: dict[str, Any] = orjson.loads(done.stdout)
    return document


HOST = """
import orjson
from loguru import logger

seen = []
logger.add(lambda m: seen.append(m.record["extra"].get("event", m.record["message"])))
"""
"""A host application with a handler of its own, recording what reaches it."""


def test_before_configure_logging_a_library_event_reaches_no_handler() -> None:
    outcome = run_fresh(
        HOST
        + """
from resilience.breaker import Breaker

Breaker("openai").force_open("maintenance")  # two events, before any configure_logging
logger.info("host line")
quiet = list(seen)
logger.enable("resilience")  # the host's own opt-in, without configure_logging
Breaker("openai").force_open("maintenance")
print(orjson.dumps({"quiet": quiet, "enabled": seen[len(quiet):]}).decode())
"""
    )
    assert outcome["quiet"] == ["host line"]
    assert outcome["enabled"] == ["breaker.transition", "breaker.override"]


def test_loguru_default_handler_survives_configure_and_close(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    outcome = run_fresh(
        HOST
        + f"""
from resilience.events import close_logging, configure_logging

configure_logging({str(log)!r})
close_logging()
logger.remove(0)  # raises ValueError if configure_logging had taken loguru's default handler
print(orjson.dumps({{"ok": True}}).decode())
"""
    )
    assert outcome == {"ok": True}


def test_a_package_imported_after_configure_logging_is_not_silenced(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    outcome = run_fresh(
        HOST
        + f"""
from resilience.events import configure_logging, emit, quiet_until_configured

configure_logging({str(log)!r})
quiet_until_configured("__main__")  # as a package's __init__ would, arriving late
emit("late.arrival")
print(orjson.dumps(seen).decode())
"""
    )
    assert outcome == ["late.arrival"]
    assert orjson.loads(log.read_bytes())["event"] == "late.arrival"


@pytest.fixture
def host() -> Iterator[list[str]]:
    seen: list[str] = []
    handler = logger.add(lambda m: seen.append(m.record["extra"].get("event", "")))
    yield seen
    logger.remove(handler)


def test_a_host_handler_survives_configure_and_close_logging(
    tmp_path: Path, host: list[str]
) -> None:
    configure_logging(str(tmp_path / "events.jsonl"))
    try:
        Breaker("openai").force_open("maintenance")
    finally:
        close_logging()
    assert host == ["breaker.transition", "breaker.override"]  # configured: every handler
    Breaker("openai").force_open("maintenance")
    emit("host.event")  # the host's own events are its business, never quieted
    assert host[2:] == ["host.event"]


def test_json_lines_come_out_as_before(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    configure_logging(str(path))
    try:
        Breaker("openai").force_open("maintenance")
        emit("budget.alert", level="WARNING", provider="openai", spent_usd=1.0)
        logger.info("plain {}", "text")
    finally:
        close_logging()
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [(line["event"], line["level"]) for line in lines] == [
        ("breaker.transition", "INFO"),
        ("breaker.override", "INFO"),
        ("budget.alert", "WARNING"),
        ("log", "INFO"),
    ]
    assert lines[1] == {
        "ts": lines[1]["ts"],
        "level": "INFO",
        "event": "breaker.override",
        "provider": "openai",
        "action": "force_open",
        "reason": "maintenance",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", lines[1]["ts"])
    assert lines[2]["spent_usd"] == 1.0
    assert lines[3]["message"] == "plain text"


def test_events_are_attributed_to_the_module_that_emits_them() -> None:
    names: list[str] = []
    handler = logger.add(lambda m: names.append(m.record["name"] or ""))
    logger.enable("resilience")
    try:
        Breaker("openai").force_open("maintenance")
    finally:
        logger.disable("resilience")
        logger.remove(handler)
    assert names == ["resilience.breaker", "resilience.breaker"]
