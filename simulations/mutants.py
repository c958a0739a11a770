"""Proof of strength: five deliberate bugs, applied one at a time, each caught by the chaos suite.

`python -m simulations.mutants` edits one source file, runs the chaos
simulation (`tests/test_chaos.py`'s two shards, profile `chaos-ci`:
derandomized, so every run explores the same test cases), expects it to fail, and restores
the file byte for byte before the next bug, also when interrupted. It exits
1 if any bug survives, or if the suite fails on the code as it is.

A bug is one or more edits, each naming the function (or module-level table) it
changes and the text it replaces there, which must stand in that function exactly
once. A refactor that moves or rewrites the code makes this script fail loudly,
naming the mutant and the function to re-anchor, rather than test nothing;
`--check` does only that, in a second, and `tests/test_mutants.py` runs it with
the ordinary tests.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Edit:
    """In `function` (a dotted name: `Class.method`, `function`, or a module-level
    `NAME = ...`), replace `before`, which must stand there exactly once, with `after`."""

    function: str
    before: str
    after: str


@dataclass(frozen=True, slots=True)
class Mutant:
    """A bug: in the module at `path`, each edit, applied together."""

    name: str
    path: str
    edits: tuple[Edit, ...]


MUTANTS: Final = (
    Mutant(
        "half-open admits every call",
        "resilience/breaker.py",
        (
            Edit(
                "Breaker.acquire",
                "if state == HALF_OPEN and self._probes < self.policy.half_open_max_calls:",
                "if state == HALF_OPEN:",
            ),
            # The guard asks `rejecting` first; it must agree with `acquire`.
            Edit(
                "Breaker.rejecting",
                "state == HALF_OPEN and self._probes >= self.policy.half_open_max_calls",
                "False",
            ),
        ),
    ),
    Mutant(
        "commit ignores an expired lease",
        "state/store/rules.py",
        (
            Edit(
                "lease_problem",
                "    if not live:\n        return f\"{owner}'s lease lapsed",
                "    if False:\n        return f\"{owner}'s lease lapsed",
            ),
        ),
    ),
    Mutant(
        "the budget is checked without reserving",
        "state/store/ledger.py",
        (
            Edit(
                "SqlLedger.try_add",
                "return [await charge(tx, key, usd, requests, expiries[key]) for key in keys]",
                "return [(used.get(key, (0.0, 0))[0] + usd, requests) for key in keys]",
            ),
        ),
    ),
    Mutant(
        "webhook dedupe is off",
        "providers/llamaparse/webhooks.py",
        (
            Edit(
                "WebhookInbox.seen",
                "return record is not None and event.event in record.events",
                "return False",
            ),
            Edit(
                "WebhookInbox.accept",
                "        if event.event in record.events:\n            return False\n",
                "        if False:\n            return False\n",
            ),
        ),
    ),
    Mutant(
        "a state edge is skipped",
        "state/machine.py",
        (
            Edit(
                "FORWARD",
                "Trigger.CHUNK: (JobState.PARSED, JobState.CHUNKED),",
                "Trigger.CHUNK: (JobState.PARSED, JobState.EMBEDDING),",
            ),
        ),
    ),
)


class Unanchored(Exception):
    """A mutant no longer applies: the code it edits moved or changed. Re-anchor it."""


def _spans(source: str) -> dict[str, tuple[int, int]]:
    """Dotted name -> (start, end) character offsets of each def, class and
    module-level or class-level `NAME = ...` in `source`."""
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    spans: dict[str, tuple[int, int]] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = child.name
            elif isinstance(child, ast.Assign) and isinstance(child.targets[0], ast.Name):
                name = child.targets[0].id
            elif isinstance(child, ast.AnnAssign) and isinstance(child.target, ast.Name):
                name = child.target.id
            else:
                continue
            end = child.end_lineno or child.lineno
            spans[prefix + name] = (starts[child.lineno - 1], starts[end])
            visit(child, f"{prefix}{name}.")

    visit(ast.parse(source), "")
    return spans


def mutated(mutant: Mutant, source: str) -> str:
    """`source` with the bug written in; `Unanchored` says which edit no longer fits where."""
    spans = _spans(source)
    for edit in mutant.edits:
        where = f"{mutant.name!r}: {edit.function} in {mutant.path}"
        if edit.function not in spans:
            raise Unanchored(f"{where} is gone; find where it moved and re-anchor the mutant")
        start, end = spans[edit.function]
        found = source[start:end].count(edit.before)
        if found != 1:
            raise Unanchored(
                f"{where} holds {edit.before!r} {found} times, not once; "
                "re-anchor the mutant to the same bug in the new code"
            )
        at = source.index(edit.before, start, end)
        source = source[:at] + edit.after + source[at + len(edit.before) :]
        spans = _spans(source)
    return source


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
    target.write_text(mutated(mutant, original.decode()))
    return original


def check() -> int:
    """Only confirm that every mutant still applies (`--check`: seconds, not minutes)."""
    for mutant in MUTANTS:
        mutated(mutant, (ROOT / mutant.path).read_text())
    print(f"all {len(MUTANTS)} mutants apply")
    return 0


def main(argv: Sequence[str]) -> int:
    try:
        if "--check" in argv:
            return check()
        for mutant in MUTANTS:  # fail before minutes of chaos, not after
            mutated(mutant, (ROOT / mutant.path).read_text())
    except Unanchored as exc:
        print(f"mutant does not apply: {exc}", file=sys.stderr)
        return 1
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
    sys.exit(main(sys.argv[1:]))
