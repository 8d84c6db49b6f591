"""Flow control's pure rules: the rate limiter's token bucket and the task concurrency limiter
(kernel/admission_flow.py), and a run's deferred tasks (kernel/admission_tasks.py):
given/when/then examples and hypothesis properties per rule."""

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
    SlotReleased,
    TakeTokens,
    TaskRef,
    check_limiter,
    decide_flow,
    decode_flow,
    encode_flow,
    fold_flow,
    granted_after,
    ready_at,
)
from kernel.commands import DeferTask, ReleaseTask
from kernel.effects import ArmTimer, EnqueueTask
from kernel.events import TaskDeferred, TaskReleased
from tests.histories.admission_scenarios import RELEASE_FIRED, deferred, limited_start
from tests.kernel_dsl import RUN_ID, complete, given

LIMITER = "admission-flow-test"


def ref(name: str, attempt: int = 1) -> TaskRef:
    return TaskRef(run_id=name, step_id="work", attempt=attempt)


def take(name: str, at_ms: int, limit: int = 2, period_ms: int = 1_000, units: int = 1):  # type: ignore[no-untyped-def]
    return TakeTokens(
        limiter_id=LIMITER, task=ref(name), at_ms=at_ms, name="task t", limit=limit,
        period_ms=period_ms, units=units,
    )  # fmt: skip


def acquire(name: str, limit: int = 1) -> AcquireSlot:
    return AcquireSlot(limiter_id=LIMITER, task=ref(name), at_ms=1, name="task t", limit=limit)


def release(name: str) -> ReleaseSlot:
    return ReleaseSlot(limiter_id=LIMITER, task=ref(name), at_ms=2)


def run_all(commands: list[AnyFlowCommand]) -> FlowState:
    state = INITIAL_FLOW
    for command in commands:
        events = decide_flow(state, command)
        if events:
            assert decode_flow(encode_flow(command, events)).events == events
        state = fold_flow(state, events)
        check_limiter(state)
    return state


# -- the token bucket ---------------------------------------------------------------------


def test_a_full_bucket_lets_limit_takes_go_at_once_and_spaces_the_next() -> None:
    state = run_all([take("a", 0), take("b", 0), take("c", 0), take("d", 0)])
    assert [ready_at(state, ref(n)) for n in "abcd"] == [0, 0, 500, 1_000]


def test_a_take_for_an_attempt_already_served_decides_nothing() -> None:
    state = run_all([take("a", 0)])
    assert decide_flow(state, take("a", 5_000)) == ()
    assert ready_at(state, ref("a")) == 0


def test_the_bucket_refills_over_its_period() -> None:
    state = run_all([take("a", 0), take("b", 0), take("c", 1_000)])
    assert ready_at(state, ref("c")) == 1_000


@settings(max_examples=200, deadline=None)
@for_all(
    limit=st.integers(1, 5),
    period_ms=st.integers(1, 5_000),
    steps=st.lists(st.tuples(st.integers(0, 3_000), st.integers(1, 5)), max_size=30),
)
def test_in_any_window_the_units_let_go_stay_within_the_bucket(
    limit: int, period_ms: int, steps: list[tuple[int, int]]
) -> None:
    at_ms, commands, units_of = 0, [], {}
    for index, (gap, asked) in enumerate(steps):
        at_ms += gap
        units = min(asked, limit)
        commands.append(take(f"r{index}", at_ms, limit, period_ms, units))
        units_of[f"r{index}"] = (at_ms, units)
    state = run_all(commands)
    ready = sorted((ready_at(state, ref(n)), units_of[n][1]) for n in units_of)
    for name, (asked_ms, _) in units_of.items():
        found = ready_at(state, ref(name))
        assert found is not None and found >= asked_ms  # never before it asked
    for start_index, (start_ms, _) in enumerate(ready):
        assert start_ms is not None
        for window_ms in (1, period_ms // 2 + 1, period_ms, 3 * period_ms):
            inside = sum(
                u for r, u in ready[start_index:] if r is not None and r < start_ms + window_ms
            )
            bound = limit + -(-window_ms * limit // period_ms)
            assert inside <= bound, (start_ms, window_ms, inside, bound)


# -- the task concurrency limiter ---------------------------------------------------------


def test_the_second_attempt_waits_and_is_granted_when_the_first_is_released() -> None:
    state = run_all([acquire("a"), acquire("b")])
    assert state.holders == (ref("a"),) and state.waiting == (ref("b"),)
    events = decide_flow(state, release("a"))
    assert granted_after(release("a"), events) == (ref("b"),)
    assert isinstance(events[-1], SlotGranted)


def test_an_acquire_or_release_already_decided_decides_nothing() -> None:
    state = run_all([acquire("a"), acquire("b")])
    assert decide_flow(state, acquire("a")) == ()
    assert decide_flow(state, acquire("b")) == ()
    assert decide_flow(state, release("zzz")) == ()


def test_a_waiting_attempt_released_leaves_the_queue_without_a_grant() -> None:
    state = run_all([acquire("a"), acquire("b"), acquire("c"), release("b")])
    assert state.waiting == (ref("c"),) and state.holders == (ref("a"),)


@settings(max_examples=200, deadline=None)
@for_all(
    limit=st.integers(1, 3),
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 6)), max_size=40),
)
def test_never_over_the_limit_never_waiting_with_a_free_slot_fifo_grants(
    limit: int, ops: list[tuple[bool, int]]
) -> None:
    state = INITIAL_FLOW
    for is_acquire, n in ops:
        command = acquire(f"t{n}", limit) if is_acquire else release(f"t{n}")
        events = decide_flow(state, command)
        granted = [e.task for e in events if isinstance(e, SlotGranted) and e.task in state.waiting]
        assert granted == list(state.waiting[: len(granted)])  # the longest waiting first
        if not is_acquire and any(isinstance(e, SlotReleased) for e in events):
            # an attempt released never takes a slot again (a redelivered acquire)
            assert decide_flow(fold_flow(state, events), acquire(f"t{n}", limit)) == ()
        state = fold_flow(state, events)
        check_limiter(state)
        assert len(state.holders) <= limit
        assert decide_flow(state, command) == ()  # deciding it again: nothing


# -- the run's side -----------------------------------------------------------------------


def test_a_rate_limited_attempt_is_deferred_with_its_release_timer() -> None:
    then = given(limited_start()).when(deferred("rate_limited", 11_000, 1_500))
    assert [type(e) for e in then.events] == [TaskDeferred]
    timers = [e for e in then.effects if isinstance(e, ArmTimer)]
    assert [t.fire_at_ms for t in timers] == [11_000]
    assert timers[0].command.kind == "task_release"
    assert not [e for e in then.effects if isinstance(e, EnqueueTask)]
    assert then.state.steps[0].status == "scheduled"


def test_the_release_timer_publishes_the_task_once() -> None:
    then = given(limited_start(), deferred("rate_limited", 11_000, 1_500)).when(RELEASE_FIRED)
    assert [type(e) for e in then.events] == [TaskReleased]
    tasks = [e for e in then.effects if isinstance(e, EnqueueTask)]
    assert [(t.step_id, t.attempt) for t in tasks] == [("work", 1)]
    assert then.state.deferred == ()
    again = given(limited_start(), deferred("rate_limited", 11_000, 1_500), RELEASE_FIRED)
    again.when(RELEASE_FIRED).then_nothing()


def test_a_deferral_already_recorded_or_of_an_ended_attempt_decides_nothing() -> None:
    given(limited_start(), deferred("rate_limited", 11_000, 1_500)).when(
        deferred("rate_limited", 11_000, 1_600)
    ).then_nothing()
    given(limited_start(), complete("work", {"ok": 1})).when(
        deferred("task_concurrency", None, 9_000)
    ).then_nothing()


def test_a_slot_granted_releases_the_waiting_attempt() -> None:
    release_task = ReleaseTask(run_id=RUN_ID, at_ms=5_000, step_id="work", attempt=1)
    then = given(limited_start(), deferred("task_concurrency", None, 1_500)).when(release_task)
    assert [type(e) for e in then.events] == [TaskReleased]
    assert [type(e) for e in then.effects if isinstance(e, EnqueueTask)] == [EnqueueTask]
    assert isinstance(deferred("task_concurrency", None, 1), DeferTask)
