"""A `JobMachine` built in the test, checked against the hand-written table.

`next_state` asks one cached machine, built once per process; a machine built
here proves that construction itself yields the graph (and lets a mutation
tool that forks after import see changes to how the machine is built).
"""

from __future__ import annotations

import pytest

from state.machine import STEPS, TERMINAL, IllegalTransition, JobMachine, JobState, Trigger
from tests.test_job_machine import EDGES, ILLEGAL

S, T = JobState, Trigger


def test_a_machine_built_afresh_has_every_edge_and_no_other() -> None:
    machine = JobMachine()
    for (state, trigger), dest in EDGES.items():
        assert machine.next_state(state, trigger) is dest
    for step in STEPS:
        assert machine.next_state(S.WAITING, T.RESUME, resume_to=step) is step
    for state, trigger in ILLEGAL:
        with pytest.raises(IllegalTransition) as raised:
            machine.next_state(state, trigger, resume_to=S.PARSING)
        assert (raised.value.state, raised.value.trigger) == (state, trigger)
        detail = "a terminal state absorbs every trigger" if state in TERMINAL else "no edge"
        assert str(raised.value) == f"cannot {trigger} from {state}: {detail}"


@pytest.mark.parametrize("resume_to", [None, S.COMPLETE])
def test_resume_with_nowhere_to_go_names_the_job_state_and_trigger(
    resume_to: JobState | None,
) -> None:
    with pytest.raises(IllegalTransition) as raised:
        JobMachine().next_state(S.WAITING, T.RESUME, resume_to=resume_to)
    assert (raised.value.state, raised.value.trigger) == (S.WAITING, T.RESUME)
    assert str(raised.value) == f"cannot resume from waiting: cannot resume to {resume_to}"
