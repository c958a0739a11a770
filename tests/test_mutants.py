"""The mutants still apply: a refactor that moves their code fails here, naming which."""

from __future__ import annotations

import pytest

from simulations.mutants import MUTANTS, ROOT, Edit, Mutant, Unanchored, mutated


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda mutant: mutant.name)
def test_every_mutant_changes_its_function_once(mutant: Mutant) -> None:
    source = (ROOT / mutant.path).read_text()
    buggy = mutated(mutant, source)
    assert buggy != source
    for edit in mutant.edits:
        assert buggy.count(edit.after) > source.count(edit.after)


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
