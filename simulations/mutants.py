"""Proof of strength: deliberate bugs, applied one at a time, each caught by the chaos suite.

`python -m simulations.mutants` edits one source file, runs the chaos
simulation (`tests/test_chaos.py`'s two shards, profile `chaos-ci`:
derandomized, so every run explores the same test cases), expects it to fail, and restores
the file byte for byte before the next bug, also when interrupted. It prints a table
(mutant, the invariant that caught it, seconds) and exits 1 if any bug survives, or if
the suite fails on the code as it is.

Each bug is a plausible slip rather than a sabotage, at least one in every module that
holds state, and each invariant class has at least one bug only it catches. Which
invariant caught a bug is read from the failure: a ground-truth invariant names itself
(`ground truth: <invariant>: ...`); any other check is named by the function that raised.

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
import re
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
    # -- the breaker ----------------------------------------------------------
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
        "half-open is scheduled after the base cooldown",
        "resilience/breaker.py",
        (
            Edit(
                "Breaker._enter",
                "loop.call_later(self._cooldown, self._cooldown_over)",
                "loop.call_later(self.policy.cooldown_s, self._cooldown_over)",
            ),
        ),
    ),
    Mutant(
        "closing keeps the grown cooldown",
        "resilience/breaker.py",
        (Edit("Breaker._enter", "            self._cooldown = self.policy.cooldown_s\n", ""),),
    ),
    # -- buckets and the guard ------------------------------------------------
    Mutant(
        "a bucket refills past its capacity",
        "resilience/bucket.py",
        (
            Edit(
                "TokenBucket._refill",
                "self._level = level if level < self.capacity else self.capacity",
                "self._level = level",
            ),
        ),
    ),
    Mutant(
        "a 429 does not pause the buckets",
        "resilience/guard.py",
        (
            Edit(
                "Guard._attempt",
                "                if pause_s is not None:\n"
                "                    await limits.pause(pause_s)\n",
                "",
            ),
        ),
    ),
    Mutant(
        "a timeout is refunded",
        "resilience/guard.py",
        (Edit("_outcome_known", " and exc.status is not None", ""),),
    ),
    # -- budgets and the ledger ----------------------------------------------
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
        "keeping a charge refunds it",
        "resilience/budget.py",
        (
            Edit(
                "Budget.keep",
                "        self._close(reservation)\n",
                "        self._close(reservation)\n"
                "        await self._ledger.add(reservation.keys, -reservation.cost, 0)\n",
            ),
        ),
    ),
    # -- the router and backfill -----------------------------------------------
    Mutant(
        "an open breaker's mock is labelled real",
        "resilience/router.py",
        (
            Edit(
                "Router.call",
                'return await self._fallback(route, capability, "circuit_open", cid, args, kwargs)',
                'return Routed._make((await route.mock(*args, **kwargs), "real", None))',
            ),
        ),
    ),
    Mutant(
        "backfill keeps the mock parse",
        "state/pipeline/backfill.py",
        (Edit("_backfill_parse", "        await store.put_parse(parsed, routed.path)\n", ""),),
    ),
    Mutant(
        "backfill keeps the mock vectors",
        "state/pipeline/backfill.py",
        (
            Edit(
                "_backfill_embeddings",
                "    await store.put_embeddings(job.sha256, model, dims, rows)\n",
                "",
            ),
        ),
    ),
    # -- workers, leases and the store -----------------------------------------
    Mutant(
        "the heartbeat renews as the lease expires",
        "state/pipeline/worker.py",
        (
            Edit(
                "Worker._heartbeat",
                "asyncio.sleep(self.lease_s / 3)",
                "asyncio.sleep(self.lease_s)",
            ),
        ),
    ),
    Mutant(
        "a job is dead-lettered an attempt early",
        "state/pipeline/worker.py",
        (
            Edit(
                "Worker._on_error",
                "if attempts >= self.max_attempts:",
                "if attempts + 1 >= self.max_attempts:",
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
        "a lapsed lease is never taken over",
        "state/store/sqlite.py",
        (
            Edit(
                "_LEASE",
                "AND (lease_owner IS NULL OR lease_expires_at <= ?3)",
                "AND lease_owner IS NULL",
            ),
        ),
    ),
    Mutant(
        "the chunk overlap is a token short",
        "state/pipeline/chunking.py",
        (Edit("_restart", "target = end - overlap", "target = end - overlap + 1"),),
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
    # -- webhooks ----------------------------------------------------------------
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
        "a failed Standard Webhooks check is let through",
        "providers/llamaparse/webhooks.py",
        (
            Edit(
                "check_delivery",
                "    if not signed:\n",
                "    if not signed and standard_secret is None:\n",
            ),
        ),
    ),
    # -- remote parses ---------------------------------------------------------------
    Mutant(
        "a named upload is re-sent without looking",
        "providers/llamaparse/client.py",
        (
            Edit(
                "LlamaParse.send",
                "sent_at = self._unanswered.get(filename) if name else None",
                "sent_at = None",
            ),
        ),
    ),
    Mutant(
        "an intent is dropped despite an unanswered upload",
        "state/pipeline/remote.py",
        (
            Edit(
                "RemoteParses._undo",
                "        if self.parser.unanswered(upload_name(document.name, row.name)):\n"
                "            return False\n",
                "",
            ),
        ),
    ),
    Mutant(
        "an expired parse refunds its estimate",
        "state/pipeline/remote.py",
        (
            Edit(
                "RemoteParses._expire",
                'await reservation.budget.keep(reservation, error_class="job_timeout")',
                'await reservation.budget.release(reservation, error_class="job_timeout")',
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
    "--tb=short",
    "-p",
    "no:cacheprovider",
)

_FRAME: Final = re.compile(r"^simulations/chaos/\S+:\d+: in (\w+)$")
_GROUND_TRUTH: Final = re.compile(r"ground truth: ([^:]+):")


@dataclass(frozen=True, slots=True)
class Verdict:
    """One run of the suite: did it pass, how long it took, and what failed first."""

    passed: bool
    seconds: float
    invariant: str
    """The invariant or check that failed first ("" if none did)."""
    detail: str
    """Its assertion line."""


def caught_by(output: str) -> tuple[str, str]:
    """(the invariant, its assertion line) of the first failure in pytest's `--tb=short`
    output: the ground-truth invariant a message names, else the simulation's function
    whose frame raised last before the first `E` line."""
    frame = ""
    for line in output.splitlines():
        found = _FRAME.match(line.strip())
        if found:
            frame = found[1]
        elif line.startswith("E  "):
            detail = line[1:].strip()
            named = _GROUND_TRUTH.search(detail)
            return (f"ground truth: {named[1]}" if named else frame or "?"), detail
    return "", ""


def run_suite() -> Verdict:
    """Run the chaos simulation once."""
    started = time.perf_counter()
    env = {
        **os.environ,
        "HYPOTHESIS_PROFILE": "chaos-ci",
        "BREAKWATER_CHAOS_SHRINK": "off",
        "PYTHONHASHSEED": "0",
    }
    done = subprocess.run(COMMAND, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    invariant, detail = caught_by(done.stdout)
    return Verdict(done.returncode == 0, elapsed, invariant, detail)


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
    baseline = run_suite()
    print(
        f"the code as it is: {'passes' if baseline.passed else 'FAILS'} ({baseline.seconds:.0f} s)"
    )
    if not baseline.passed:
        print(f"    {baseline.invariant}: {baseline.detail[:200]}")
        return 1
    width = max(len(mutant.name) for mutant in MUTANTS)
    print(f"{'mutant':{width}}  {'verdict':8}  {'seconds':>7}  caught by")
    survivors = 0
    for mutant in MUTANTS:
        original = apply(mutant)
        try:
            verdict = run_suite()
        finally:
            (ROOT / mutant.path).write_bytes(original)
        survivors += verdict.passed
        outcome = "SURVIVED" if verdict.passed else "caught"
        print(f"{mutant.name:{width}}  {outcome:8}  {verdict.seconds:7.0f}  {verdict.invariant}")
        sys.stdout.flush()
    print(f"{len(MUTANTS) - survivors} of {len(MUTANTS)} bugs caught; every file restored")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
