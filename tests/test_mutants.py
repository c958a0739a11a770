"""The mutants still apply: a refactor that moves their code fails here, naming which."""

from __future__ import annotations

import pytest

from simulations.mutants import MUTANTS, ROOT, Edit, Mutant, Unanchored, caught_by, mutated


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda mutant: mutant.name)
def test_every_mutant_changes_its_function_once(mutant: Mutant) -> None:
    source = (ROOT / mutant.path).read_text()
    buggy = mutated(mutant, source)
    assert buggy != source
    for edit in mutant.edits:
        # Written in (more of the new text), or, for a deletion or a shortening, taken out.
        assert buggy.count(edit.before) < source.count(edit.before) or (
            buggy.count(edit.after) > source.count(edit.after)
        )


def test_at_least_twenty_mutants_in_every_module_that_holds_state() -> None:
    modules = {mutant.path for mutant in MUTANTS}
    assert len(MUTANTS) >= 20
    assert {
        "resilience/breaker.py",
        "resilience/bucket.py",
        "resilience/budget.py",
        "state/store/ledger.py",
        "resilience/guard.py",
        "resilience/router.py",
        "state/pipeline/worker.py",
        "state/store/sqlite.py",
        "providers/llamaparse/webhooks.py",
        "providers/llamaparse/client.py",
        "state/pipeline/backfill.py",
    } <= modules
    assert len({mutant.name for mutant in MUTANTS}) == len(MUTANTS)


FAILURE = """\
_____________________ TestPipelineChaosShardA.runTest _____________________
simulations/chaos/machine.py:301: in teardown
    self._settle_and_check()
simulations/chaos/machine.py:340: in _settle_and_check
    self.parse_spend_is_billed_spend()
E   AssertionError: llamaparse: $0.1 charged, $0.2 billed or held
"""


def test_the_catching_check_is_named_by_its_frame_or_its_ground_truth_prefix() -> None:
    invariant, detail = caught_by(FAILURE)
    assert invariant == "_settle_and_check"
    assert detail.startswith("AssertionError: llamaparse")
    named = FAILURE.replace("llamaparse: $", "ground truth: billed spend: llamaparse $")
    assert caught_by(named)[0] == "ground truth: billed spend"
    assert caught_by("3 passed in 1.0s") == ("", "")


SOURCE = """
class Gate:
    def open(self):
        return self.ready

    def close(self):
        return self.ready
"""


def test_an_edit_applies_only_inside_the_function_it_names() -> None:
    mutant = Mutant("never ready", "gate.py", (Edit("Gate.close", "self.ready", "False"),))
    assert mutated(mutant, SOURCE) == SOURCE.replace(
        "    def close(self):\n        return self.ready",
        "    def close(self):\n        return False",
    )


def test_a_moved_function_names_the_mutant_to_re_anchor() -> None:
    mutant = Mutant("never ready", "gate.py", (Edit("Gate.shut", "self.ready", "False"),))
    with pytest.raises(Unanchored, match=r"'never ready': Gate.shut in gate.py is gone"):
        mutated(mutant, SOURCE)


def test_text_not_in_the_function_names_the_mutant_to_re_anchor() -> None:
    mutant = Mutant("never ready", "gate.py", (Edit("Gate.open", "self.closed", "False"),))
    with pytest.raises(Unanchored, match=r"holds 'self.closed' 0 times, not once"):
        mutated(mutant, SOURCE)
