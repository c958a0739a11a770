"""Proof of strength: five deliberate bugs, applied one at a time, each caught by the chaos suite.

`python -m simulations.mutants` edits one source file, runs the chaos
simulation (`tests/test_chaos.py`'s two shards, profile `chaos-ci`:
derandomized, so every run explores the same test cases), expects it to fail, and restores
the file byte for byte before the next bug, also when interrupted. It exits
1 if any bug survives, or if the suite fails on the code as it is.

A bug is one or more text replacements, each of which must match exactly once, so a refactor
that moves the code makes this script fail loudly rather than test nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Mutant:
    """A bug: in `path`, each (original, replacement) edit, applied together."""

    name: str
    path: str
    edits: tuple[tuple[str, str], ...]


MUTANTS: Final = (
    Mutant(
        "half-open admits every call",
        "resilience/breaker.py",
        (
            (
                "if state == HALF_OPEN and self._probes < self.policy.half_open_max_calls:",
                "if state == HALF_OPEN:",
            ),
            # The guard asks `rejecting` first; it must agree with `acquire`.
            (
                "state == HALF_OPEN and self._probes >= self.policy.half_open_max_calls",
                "False",
            ),
        ),
    ),
    Mutant(
        "commit ignores an expired lease",
        "state/store/rules.py",
        (
            (
                "    if not live:\n        return f\"{owner}'s lease lapsed",
                "    if False:\n        return f\"{owner}'s lease lapsed",
            ),
        ),
    ),
    Mutant(
        "the budget is checked without reserving",
        "state/store/ledger.py",
        (
            (
                "raise _Refused\n"
                "                return [await charge(tx, key, usd, requests, expiries[key])"
                " for key in keys]",
                "raise _Refused\n"
                "                return [(used.get(key, (0.0, 0))[0] + usd, requests)"
                " for key in keys]",
            ),
        ),
    ),
    Mutant(
        "webhook dedupe is off",
        "providers/llamaparse/webhooks.py",
        (
            ("return record is not None and event.event in record.events", "return False"),
            (
                "        if event.event in record.events:\n            return False\n",
                "        if False:\n            return False\n",
            ),
        ),
    ),
    Mutant(
        "a state edge is skipped",
        "state/machine.py",
        (
            (
                "Trigger.CHUNK: (JobState.PARSED, JobState.CHUNKED),",
                "Trigger.CHUNK: (JobState.PARSED, JobState.EMBEDDING),",
            ),
        ),
    ),
)

COMMAND: Final = (
    sys.executable,
    "-m",
    "pytest",
    "tests/test_chaos.py",
    "-k",
    "Shard",
    "-n",
    "2",  # the two shards side by side; -x stops both at the first failure
    "-x",
    "-q",
    "-p",
    "no:cacheprovider",
)


def run_suite() -> tuple[bool, float, str]:
    """Run the chaos simulation; (passed, seconds, the failure's first assertion line)."""
    started = time.perf_counter()
    env = {
        **os.environ,
        "HYPOTHESIS_PROFILE": "chaos-ci",
        "BREAKWATER_CHAOS_SHRINK": "off",
        "PYTHONHASHSEED": "0",
    }
    done = subprocess.run(COMMAND, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    caught = next((line.strip() for line in done.stdout.splitlines() if line.startswith("E  ")), "")
    return done.returncode == 0, elapsed, caught


def apply(mutant: Mutant) -> bytes:
    """Write the bug into its file; return the file's original bytes."""
    target = ROOT / mutant.path
    original = target.read_bytes()
    text = original.decode()
    for before, after in mutant.edits:
        found = text.count(before)
        if found != 1:
            raise SystemExit(
                f"{mutant.name}: expected {before!r} once in {mutant.path}, found {found}"
            )
        text = text.replace(before, after)
    target.write_text(text)
    return original


def main() -> int:
    passed, seconds, detail = run_suite()
    print(f"{'the code as it is':42} {'passes' if passed else 'FAILS'}  ({seconds:.0f} s)")
    if not passed:
        print(f"    {detail}")
        return 1
    survivors = 0
    for mutant in MUTANTS:
        original = apply(mutant)
        try:
            passed, seconds, detail = run_suite()
        finally:
            (ROOT / mutant.path).write_bytes(original)
        verdict = "SURVIVED" if passed else "caught"
        survivors += passed
        print(f"{mutant.name:42} {verdict}  ({seconds:.0f} s)")
        if detail:
            print(f"    {detail[:150]}")
    print(f"{len(MUTANTS) - survivors} of {len(MUTANTS)} bugs caught; every file restored")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
