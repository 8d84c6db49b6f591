"""Two workflows naming one rate limiter (a task type) with different terms: the limiter keeps
a bucket per workflow and a task goes only once its units are in every bucket
(kernel/admission_flow.py), so the strictest terms hold whatever the periods. A newer version
of a workflow replaces its own terms, never another's. Given/when/then over the pure rules and
a hypothesis property: in no window do the tasks let go exceed any workflow's bound (each
workflow's bucket counting from its first ask)."""

from __future__ import annotations

from hypothesis import given as for_all
from hypothesis import settings
from hypothesis import strategies as st

from kernel.admission_flow import (
    INITIAL_FLOW,
    FlowState,
    LimiterOpened,
    TakeTokens,
    TaskRef,
    decide_flow,
    decode_flow,
    encode_flow,
    fold_flow,
    ready_at,
)

LIMITER = "admission-flow-strictest"


def ref(name: str) -> TaskRef:
    return TaskRef(run_id=name, step_id="work", attempt=1)


def take(name: str, at_ms: int, workflow: str, limit: int, period_ms: int) -> TakeTokens:
    return TakeTokens(
        limiter_id=LIMITER, task=ref(name), at_ms=at_ms, name="task t", limit=limit,
        period_ms=period_ms, workflow=workflow,
    )  # fmt: skip


def run_all(commands: list[TakeTokens], state: FlowState = INITIAL_FLOW) -> FlowState:
    for command in commands:
        events = decide_flow(state, command)
        if events:
            assert decode_flow(encode_flow(command, events)).events == events
        state = fold_flow(state, events)
    return state


def test_the_lower_limit_of_another_workflow_spaces_the_lenient_workflows_tasks() -> None:
    # given "wide" asks 10 per second and "narrow" 2 per second for the same task type
    state = run_all([take("w1", 0, "wide", 10, 1_000), take("n1", 0, "narrow", 2, 1_000)])
    # when wide asks again at once
    state = run_all([take("w2", 0, "wide", 10, 1_000), take("w3", 0, "wide", 10, 1_000)], state)
    # then narrow's bucket holds (counting from narrow's first ask): two at once, the next
    # after half a second
    assert [ready_at(state, ref(n)) for n in ("w1", "n1", "w2", "w3")] == [0, 0, 0, 500]


def test_different_periods_keep_both_bounds_the_burst_and_the_rate() -> None:
    # given "burst" allows 5 per second (a burst of 5) and "steady" 60 per minute (1/s, a
    # burst of 60): the same rate, different bursts and periods
    commands = [take("b0", 0, "burst", 5, 1_000), take("s0", 0, "steady", 60, 60_000)]
    commands += [take(f"s{n}", 0, "steady", 60, 60_000) for n in range(1, 8)]
    state = run_all(commands)
    ready = sorted(
        r
        for n in ["b0", *(f"s{n}" for n in range(8))]
        if (r := ready_at(state, ref(n))) is not None
    )
    # then the smaller burst applies: five at once, then one every 200 ms (burst's rate)
    assert ready == [0, 0, 0, 0, 0, 200, 400, 600, 800]


def test_a_newer_version_replaces_its_own_terms_never_anothers() -> None:
    state = run_all([take("a", 0, "one", 1, 1_000), take("b", 0, "two", 5, 1_000)])
    assert [(b.workflow, b.limit) for b in state.buckets] == [("one", 1), ("two", 5)]
    state = run_all([take("c", 10_000, "one", 4, 1_000)], state)
    assert [(b.workflow, b.limit) for b in state.buckets] == [("two", 5), ("one", 4)]
    assert state.limit == 4  # the strictest rate's terms, for people


def test_the_same_terms_again_open_nothing() -> None:
    state = run_all([take("a", 0, "one", 2, 1_000)])
    events = decide_flow(state, take("b", 0, "one", 2, 1_000))
    assert not [e for e in events if isinstance(e, LimiterOpened)]


def test_a_single_workflows_bucket_is_the_plain_token_bucket() -> None:
    state = run_all([take(n, 0, "one", 2, 1_000) for n in "abcd"])
    assert [ready_at(state, ref(n)) for n in "abcd"] == [0, 0, 500, 1_000]


terms = st.tuples(st.integers(1, 5), st.integers(1, 4_000))


@settings(max_examples=300, deadline=None)
@for_all(
    asked=st.dictionaries(st.sampled_from(["a", "b", "c"]), terms, min_size=1),
    steps=st.lists(st.tuples(st.integers(0, 2_000), st.sampled_from(["a", "b", "c"])), max_size=30),
)
def test_no_window_lets_go_more_than_any_workflows_bound(
    asked: dict[str, tuple[int, int]], steps: list[tuple[int, str]]
) -> None:
    at_ms, commands, asked_at = 0, [], {}
    for index, (gap, workflow) in enumerate(steps):
        if workflow not in asked:
            continue
        at_ms += gap
        limit, period_ms = asked[workflow]
        commands.append(take(f"r{index}", at_ms, workflow, limit, period_ms))
        asked_at[f"r{index}"] = at_ms
    state = run_all(commands)
    found = {name: ready_at(state, ref(name)) for name in asked_at}
    for name, at in asked_at.items():
        ready_ms = found[name]
        assert ready_ms is not None and ready_ms >= at  # never before it asked
    for workflow in {command.workflow for command in commands}:
        # a workflow's bucket counts every task from its first ask on, whoever asked
        first = next(i for i, c in enumerate(commands) if c.workflow == workflow)
        ready = sorted(found[c.task.run_id] or 0 for c in commands[first:])  # (none is None)
        limit, period_ms = asked[workflow]
        for start_index, start_ms in enumerate(ready):
            for window_ms in (1, period_ms // 2 + 1, period_ms, 2 * period_ms):
                inside = sum(1 for r in ready[start_index:] if r < start_ms + window_ms)
                bound = limit + -(-window_ms * limit // period_ms)
                assert inside <= bound, (workflow, start_ms, window_ms, inside, bound, asked)
