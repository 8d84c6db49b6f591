"""Given/when/then for the `continue_as_new` step type (steps/continuation.py): the run ends as
continued_as_new, the new run is started with the links, the chain is bounded."""

from __future__ import annotations

import pytest
from hypothesis import given as hypothesis_given
from hypothesis import settings
from hypothesis import strategies as st

from kernel import limits, run_links
from kernel.commands import Rejection, StartRun
from kernel.decide import decide
from kernel.effects import CancelTimer, ReportToParent, StartContinuation
from kernel.events import RunContinuedAsNew, RunStarted, StepCompleted, StepFailed, StepScheduled
from kernel.react import resume
from kernel.reducer import fold, fold_from
from kernel.state import is_terminal
from kernel.workflow import StepDef
from steps import continuation
from tests.kernel_dsl import RUN_ID, cancel, complete, given, raw, start, step_of, task, workflow


def again(*depends_on: str, **config: object) -> StepDef:
    return step_of("again", "continue_as_new", config, *depends_on)


LOOP = workflow(task("work"), again("work"), name="loop", timeout_ms=60_000)


def test_the_run_ends_as_continued_as_new_and_starts_the_next_run() -> None:
    when = given(start(LOOP, {"n": 0})).when(complete("work", {"n": 1}))
    at = when.at_ms
    new_id = continuation.next_run_id(RUN_ID, 1)
    assert new_id == "r1-cont1"
    when.then(
        StepCompleted(step_id="work", attempt=1, output=raw({"n": 1}), at_ms=at),
        StepScheduled(step_id="again", attempt=1, input=raw({"n": 1}), at_ms=at),
        StepCompleted(step_id="again", attempt=1, output=raw({"continued_as": new_id}), at_ms=at),
        RunContinuedAsNew(
            step_id="again", continued_as=new_id, workflow="loop", input=raw({"n": 1}), at_ms=at
        ),
    ).then_state(status="continued_as_new", continued_as=new_id)
    assert is_terminal(when.state)
    starts = [e for e in when.effects if isinstance(e, StartContinuation)]
    assert len(starts) == 1
    assert (starts[0].new_run_id, starts[0].chain_root, starts[0].chain_index) == (new_id, "r1", 1)
    assert starts[0].definition == LOOP, "the same workflow carries its own definition"
    assert CancelTimer(run_id=RUN_ID, timer_id="run_timeout") in when.effects


def test_input_from_names_the_step_whose_output_is_carried_and_workflow_another() -> None:
    wf = workflow(task("a"), task("b", "a"), again("a", "b", input_from="a", workflow="other"))
    when = given(start(wf), complete("a", {"from": "a"})).when(complete("b", {"from": "b"}))
    ended = when.events[-1]
    assert isinstance(ended, RunContinuedAsNew)
    assert (ended.workflow, bytes(ended.input)) == ("other", b'{"from":"a"}')
    start_effect = next(e for e in when.effects if isinstance(e, StartContinuation))
    assert start_effect.definition is None, "another workflow is looked up by name"


def test_the_new_run_records_the_link_and_the_chain_root() -> None:
    command = StartRun(
        run_id="r1-cont1",
        at_ms=5,
        workflow=LOOP,
        input=raw({"n": 1}),
        continued_from="r1",
        chain_root="r1",
        chain_index=1,
    )
    when = given().when(command)
    first = when.events[0]
    assert isinstance(first, RunStarted) and first.continued_from == "r1"
    when.then_state(continued_from="r1", chain_root="r1", chain_index=1)
    assert run_links.root_of(when.state) == "r1"
    assert continuation.next_run_id("r1", 2) == "r1-cont2"


def test_the_chain_is_bounded() -> None:
    last = StartRun(
        run_id="r1",
        at_ms=5,
        workflow=LOOP,
        input=raw(0),
        continued_from="x",
        chain_root="root",
        chain_index=limits.continue_as_new_chain_max,
    )
    when = given(last).when(complete("work", 1))
    failed = [e for e in when.events if isinstance(e, StepFailed)]
    assert failed and "continue_as_new_chain_max" in failed[0].error.message
    when.then_lacks(RunContinuedAsNew).then_state(status="failed")


def test_a_continued_child_reports_to_its_parent_under_the_chain_root_id() -> None:
    child = StartRun(
        run_id="p-s-1",
        at_ms=5,
        workflow=LOOP,
        input=raw(0),
        parent_run_id="p",
        parent_step_id="s",
        depth=1,
    )
    continued = given(child).when(complete("work", 1, run_id="p-s-1"))
    assert not [e for e in continued.effects if isinstance(e, ReportToParent)]
    start_effect = next(e for e in continued.effects if isinstance(e, StartContinuation))
    assert (start_effect.parent_run_id, start_effect.parent_step_id) == ("p", "s")
    done_workflow = workflow(task("work"), name="loop")
    successor = StartRun(
        run_id="p-s-1-cont1",
        at_ms=6,
        workflow=done_workflow,
        input=raw(1),
        parent_run_id="p",
        parent_step_id="s",
        depth=1,
        continued_from="p-s-1",
        chain_root="p-s-1",
        chain_index=1,
    )
    ended = given(successor).when(complete("work", 2, run_id="p-s-1-cont1"))
    reports = [e for e in ended.effects if isinstance(e, ReportToParent)]
    assert [(r.run_id, r.status) for r in reports] == [("p-s-1", "completed")]


def test_resume_of_a_continued_run_starts_its_successor_again() -> None:
    ended = given(start(LOOP, 0), complete("work", 1)).state
    (effect,) = resume(ended)
    assert isinstance(effect, StartContinuation) and effect.new_run_id == "r1-cont1"
    assert bytes(effect.input) == b"1" and effect.workflow == "loop"


@pytest.mark.parametrize("root", ["abc", "a-b", "x" * 128])
def test_next_run_ids_are_subject_safe_distinct_and_bounded(root: str) -> None:
    ids = {continuation.next_run_id(root, index) for index in range(1, 50)}
    assert len(ids) == 49
    assert all(len(i) <= limits.run_id_length_max and "." not in i for i in ids)


@settings(max_examples=100, deadline=None)
@hypothesis_given(
    st.integers(min_value=0, max_value=limits.continue_as_new_chain_max),
    st.lists(st.sampled_from(["work", "again", "cancel"]), max_size=4),
)
def test_continued_runs_are_terminal_and_split_folds_agree(index: int, later: list[str]) -> None:
    """Whatever the chain position: the run ends continued (or failed at the bound), every
    later command decides nothing, and the fold splits anywhere."""
    begin = StartRun(
        run_id=RUN_ID,
        at_ms=1,
        workflow=LOOP,
        input=raw(0),
        chain_root="root",
        chain_index=index,
        continued_from=None if index == 0 else "prev",
    )
    ran = given(begin, complete("work", 1, at_ms=2))
    state = ran.state
    expected = "failed" if index == limits.continue_as_new_chain_max else "continued_as_new"
    assert state.status == expected and state.chain_index == index
    events = list(ran.events)
    for cut in range(len(events) + 1):
        assert fold_from(fold(events[:cut]), events[cut:]) == state
    for offset, action in enumerate(later):
        command = (
            cancel(at_ms=10 + offset)
            if action == "cancel"
            else complete(action, 2, at_ms=10 + offset)
        )
        decided = decide(state, command)
        assert decided == () or isinstance(decided, Rejection), decided
