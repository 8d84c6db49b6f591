"""Two workflows naming one task type with different max_task_concurrency: the lowest limit
applies across them (kernel/admission_flow.py). A newer version of a workflow replaces its own
limit, never another workflow's. Given/when/then over the pure limiter rules, and a
hypothesis property: never more holders than the lowest limit asked."""

from __future__ import annotations

from hypothesis import given as for_all
from hypothesis import settings
from hypothesis import strategies as st

from kernel.admission_flow import (
    INITIAL_FLOW,
    AcquireSlot,
    AnyFlowCommand,
    FlowState,
    ReleaseSlot,
    SlotGranted,
    SlotQueued,
    TaskRef,
    check_limiter,
    decide_flow,
    fold_flow,
)

LIMITER = "admission-flow-lowest"


def ref(name: str) -> TaskRef:
    return TaskRef(run_id=name, step_id="work", attempt=1)


def acquire(name: str, workflow: str, limit: int) -> AcquireSlot:
    return AcquireSlot(
        limiter_id=LIMITER, task=ref(name), at_ms=1, name="task t", limit=limit,
        workflow=workflow,
    )  # fmt: skip


def release(name: str) -> ReleaseSlot:
    return ReleaseSlot(limiter_id=LIMITER, task=ref(name), at_ms=2)


def run_all(commands: list[AnyFlowCommand], state: FlowState = INITIAL_FLOW) -> FlowState:
    for command in commands:
        state = fold_flow(state, decide_flow(state, command))
        check_limiter(state)
    return state


def test_the_lower_limit_of_another_workflow_applies_to_the_type() -> None:
    state = run_all([acquire("a1", "wide", 3), acquire("a2", "wide", 3)])
    assert state.limit == 3 and len(state.holders) == 2
    events = decide_flow(state, acquire("b1", "narrow", 1))
    assert [type(e) for e in events][-1] is SlotQueued  # 2 running, over narrow's 1
    state = fold_flow(state, events)
    assert state.limit == 1 and state.asked == (("wide", 3), ("narrow", 1))
    assert [type(e) for e in decide_flow(state, acquire("a3", "wide", 3))][-1] is SlotQueued


def test_the_lowest_limit_holds_whichever_workflow_asked_first() -> None:
    narrow_first = run_all([acquire("b1", "narrow", 1), acquire("a1", "wide", 5)])
    assert narrow_first.limit == 1 and narrow_first.holders == (ref("b1"),)
    assert narrow_first.waiting == (ref("a1"),)
    after = run_all([release("b1")], narrow_first)
    assert after.holders == (ref("a1"),)  # granted when the slot freed, one at a time


def test_a_newer_version_replaces_its_own_limit_never_another_s() -> None:
    state = run_all([acquire("a1", "wide", 3), acquire("b1", "narrow", 1)])
    assert state.limit == 1
    raised_own = run_all([acquire("b2", "narrow", 4)], state)
    assert raised_own.limit == 3 and raised_own.asked == (("wide", 3), ("narrow", 4))
    lowered = run_all([acquire("a2", "wide", 2)], raised_own)
    assert lowered.limit == 2


def test_an_ask_under_the_same_limit_opens_nothing_again() -> None:
    state = run_all([acquire("a1", "wide", 3)])
    events = decide_flow(state, acquire("a2", "wide", 3))
    assert [type(e) for e in events] == [SlotGranted]


asks = st.lists(
    st.tuples(st.sampled_from(["w1", "w2", "w3"]), st.integers(1, 4), st.booleans()),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@for_all(asks)
def test_never_more_holders_than_the_lowest_limit_asked_at_the_time(
    steps: list[tuple[str, int, bool]],
) -> None:
    state = INITIAL_FLOW
    for index, (workflow, limit, ends_one) in enumerate(steps):
        if ends_one and state.holders:
            command: AnyFlowCommand = ReleaseSlot(
                limiter_id=LIMITER, task=state.holders[0], at_ms=index
            )
        else:
            command = acquire(f"t{index}", workflow, limit)
        for event in decide_flow(state, command):
            state = fold_flow(state, (event,))
            if isinstance(event, SlotGranted):
                assert len(state.holders) <= min(each[1] for each in state.asked)
        check_limiter(state)
        assert state.limit == min(each[1] for each in state.asked)
