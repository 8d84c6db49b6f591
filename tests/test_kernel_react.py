"""Effects of decided events (`react`) and after a restart (`resume`).

`react` runs over each decided event with the state just after it, as the engine does. `resume`
must re-derive exactly what is still outstanding: the task messages of live attempts and the
timers armed and neither fired nor cancelled.
"""

from __future__ import annotations

import pytest

from kernel import limits
from kernel.commands import AnyCommand, FireTimer, Rejection
from kernel.decide import decide
from kernel.effects import (
    AnyEffect,
    ArmTimer,
    CancelTimer,
    EnqueueTask,
    attempt_key,
    attempt_key_of,
    task_msg_id,
)
from kernel.events import StepCompleted, StepFailed, StepTimedOut
from kernel.react import react, resume
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState, is_terminal
from kernel.timers import timer_seed
from kernel.workflow import WorkflowDef
from tests.kernel_dsl import (
    cancel,
    complete,
    decided_events,
    fail,
    fire_retry,
    fire_run_timeout,
    fire_step_timeout,
    given,
    raw,
    retry,
    show,
    start,
    started,
    task,
    unstamped,
    workflow,
)


def enqueue(
    step_id: str, input: object = None, *, attempt: int = 1, deadline_ms: int | None = None
) -> EnqueueTask:
    return EnqueueTask(
        run_id="r1",
        step_id=step_id,
        attempt=attempt,
        task=step_id,
        input=raw(input),
        metadata=raw({}),
        msg_id=f"r1:{step_id}:{attempt}~00000000",  # (the run's seed: 0)
        deadline_ms=deadline_ms,
    )


def step_timer(step_id: str, attempt: int, fire_at_ms: int) -> ArmTimer:
    timer_id = f"step_timeout.{step_id}.{attempt}"
    command = FireTimer(
        run_id="r1",
        at_ms=fire_at_ms,
        seed=timer_seed(0, timer_id),
        timer_id=timer_id,
        kind="step_timeout",
        step_id=step_id,
        attempt=attempt,
    )
    return ArmTimer(run_id="r1", timer_id=timer_id, fire_at_ms=fire_at_ms, command=command)


def retry_timer(step_id: str, attempt: int, fire_at_ms: int) -> ArmTimer:
    timer_id = f"retry.{step_id}.{attempt}"
    command = FireTimer(
        run_id="r1",
        at_ms=fire_at_ms,
        seed=timer_seed(0, timer_id),
        timer_id=timer_id,
        kind="retry",
        step_id=step_id,
        attempt=attempt,
    )
    return ArmTimer(run_id="r1", timer_id=timer_id, fire_at_ms=fire_at_ms, command=command)


def run_timer(fire_at_ms: int) -> ArmTimer:
    command = FireTimer(
        run_id="r1",
        at_ms=fire_at_ms,
        seed=timer_seed(0, "run_timeout"),
        timer_id="run_timeout",
        kind="run_timeout",
    )
    return ArmTimer(run_id="r1", timer_id="run_timeout", fire_at_ms=fire_at_ms, command=command)


def cancel_timer(timer_id: str) -> CancelTimer:
    return CancelTimer(run_id="r1", timer_id=timer_id)


# --- react --------------------------------------------------------------------------------


def test_the_task_message_id_is_run_step_attempt_and_the_runs_life() -> None:
    assert task_msg_id("r9", "fetch", 3, 0x1_2345_6789) == "r9:fetch:3~23456789"
    assert attempt_key_of(task_msg_id("r9", "fetch", 3, 5)) == attempt_key("r9", "fetch", 3)
    assert attempt_key_of("r9:fetch:3") == "r9:fetch:3"  # (an id of before life tags)
    # A run deleted and started again under its id draws another seed: other message ids,
    # so the tasks' duplicate window does not drop the new run's tasks.
    assert task_msg_id("r9", "fetch", 1, 11) != task_msg_id("r9", "fetch", 1, 12)
    with pytest.raises(AssertionError):
        task_msg_id("r9", "fetch", 0, 1)


def test_a_scheduled_task_is_enqueued_with_its_input_and_message_id() -> None:
    wf = workflow(task("a"), task("b"))
    given().when(start(wf, {"q": 1})).then_effects(enqueue("a", {"q": 1}), enqueue("b", {"q": 1}))


def test_a_step_with_a_timeout_also_arms_its_timer() -> None:
    wf = workflow(task("a", timeout_ms=500), task("b"))
    given().when(start(wf, at_ms=1_000)).then_effects(
        enqueue("a", deadline_ms=1_500), step_timer("a", 1, 1_500), enqueue("b")
    )


def test_a_workflow_timeout_arms_the_run_timer_at_start() -> None:
    wf = workflow(task("a"), timeout_ms=60_000)
    given().when(start(wf, at_ms=1_000)).then_effects(run_timer(61_000), enqueue("a"))


def test_task_started_has_no_effect() -> None:
    wf = workflow(task("a", timeout_ms=500))
    given(start(wf)).when(started("a")).then_effects()


def test_a_retry_arms_the_retry_timer_and_its_firing_enqueues_the_next_attempt() -> None:
    wf = workflow(task("a", retry=retry(3, initial_delay_ms=100)))
    when = given(start(wf)).when(fail("a", at_ms=5_000))
    when.then_effects(retry_timer("a", 2, 5_100))
    fired = given(start(wf), fail("a", at_ms=5_000)).when(fire_retry("a", 2, at_ms=5_100))
    fired.then_effects(enqueue("a", attempt=2))


def test_completion_cancels_the_timeout_of_that_attempt_only() -> None:
    wf = workflow(task("a", timeout_ms=500, retry=retry(2, initial_delay_ms=10)), task("b", "a"))
    when = given(start(wf), fail("a"), fire_retry("a", 2)).when(complete("a", 1, attempt=2))
    when.then_effects(cancel_timer("step_timeout.a.2"), enqueue("b", 1))
    no_timeout = workflow(task("a"), task("b", "a"))
    given(start(no_timeout)).when(complete("a", 1)).then_effects(enqueue("b", 1))


def test_a_failed_attempt_cancels_its_timeout_before_the_retry_timer_is_armed() -> None:
    wf = workflow(task("a", timeout_ms=500, retry=retry(2, initial_delay_ms=10)))
    given(start(wf)).when(fail("a", at_ms=3_000)).then_effects(
        cancel_timer("step_timeout.a.1"), retry_timer("a", 2, 3_010)
    )


def test_a_timed_out_attempt_needs_no_cancel_of_the_timer_that_fired() -> None:
    wf = workflow(task("a", timeout_ms=500, retry=retry(2, initial_delay_ms=10)))
    given(start(wf, at_ms=1_000)).when(fire_step_timeout("a", 1, at_ms=1_500)).then_effects(
        retry_timer("a", 2, 1_510)
    )


def test_the_run_end_cancels_every_timer_still_armed() -> None:
    wf = workflow(
        task("a"),
        task("slow", timeout_ms=10_000),
        task("waiting", retry=retry(3, initial_delay_ms=50_000)),
        timeout_ms=100_000,
    )
    when = given(start(wf), fail("waiting")).when(fail("a"))
    when.then_effects(
        cancel_timer("run_timeout"),
        cancel_timer("step_timeout.slow.1"),
        cancel_timer("retry.waiting.2"),
    )


def test_a_completed_run_cancels_only_the_run_timer() -> None:
    wf = workflow(task("a", timeout_ms=100), timeout_ms=1_000)
    given(start(wf)).when(complete("a")).then_effects(
        cancel_timer("step_timeout.a.1"), cancel_timer("run_timeout")
    )
    no_timers = workflow(task("a"))
    given(start(no_timers)).when(complete("a")).then_effects()


def test_a_cancelled_run_cancels_its_timers() -> None:
    wf = workflow(task("a", timeout_ms=100), timeout_ms=1_000)
    given(start(wf)).when(cancel()).then_effects(
        cancel_timer("run_timeout"), cancel_timer("step_timeout.a.1")
    )


def test_compensation_handlers_are_enqueued() -> None:
    wf = workflow(task("a", compensate="undo"), task("b", "a"), task("undo"))
    given(start(wf), complete("a", 7)).when(fail("b")).then_effects(
        enqueue("undo", {"step_id": "a", "output": 7})
    )


def test_a_step_failed_for_an_oversized_input_is_never_enqueued() -> None:
    half = "x" * (limits.payload_bytes_max // 2)
    wf = workflow(task("a"), task("b"), task("c", "a", "b"))
    when = given(start(wf), complete("a", half)).when(complete("b", half))
    # The rule itself holds: c fails with invalid_input and the run fails.
    assert any(
        isinstance(e, StepFailed) and e.step_id == "c" and e.error.kind == "invalid_input"
        for e in when.events
    )
    when.then_state(status="failed")
    assert not any(isinstance(e, EnqueueTask) for e in when.effects), show(when.effects)


# --- resume -------------------------------------------------------------------------------


def test_resume_of_a_new_or_terminal_run_is_nothing() -> None:
    assert resume(INITIAL_STATE) == ()
    wf = workflow(task("a", timeout_ms=10), timeout_ms=100)
    assert resume(given(start(wf), complete("a")).state) == ()
    assert resume(given(start(wf), fail("a")).state) == ()
    assert resume(given(start(wf), cancel()).state) == ()


def test_resume_mid_run_re_derives_live_tasks_and_timers_and_nothing_for_done_steps() -> None:
    wf = workflow(
        task("done"),
        task("running", timeout_ms=5_000),
        task("waiting", retry=retry(2, initial_delay_ms=700)),
        task("later", "done", "running"),
        timeout_ms=90_000,
    )
    mid = given(
        start(wf, "in", at_ms=1_000),
        complete("done", at_ms=2_000),
        started("running", at_ms=2_500),
        fail("waiting", at_ms=3_000),
    )
    assert [s.status for s in mid.state.steps] == ["completed", "running", "retry_wait", "pending"]
    assert tuple(map(unstamped, resume(mid.state))) == (
        run_timer(91_000),
        enqueue("running", "in", deadline_ms=6_000),
        step_timer("running", 1, 6_000),
        retry_timer("waiting", 2, 3_700),
    )


def test_resume_of_a_compensating_run_enqueues_the_live_handler() -> None:
    wf = workflow(task("a", compensate="undo"), task("b", "a"), task("undo"), timeout_ms=50_000)
    state = given(start(wf), complete("a", 1), fail("b")).state
    assert state.status == "compensating"
    assert tuple(map(unstamped, resume(state))) == (enqueue("undo", {"step_id": "a", "output": 1}),)


def _outstanding_after(
    commands: tuple[AnyCommand, ...],
) -> list[tuple[RunState, dict[str, AnyEffect]]]:
    """After each command: the state and the effects still outstanding, tracked from `react`.

    A task message is outstanding until its attempt completes, fails or times out; a timer
    until it is cancelled or its FireTimer command is handled.
    """
    state = INITIAL_STATE
    outstanding: dict[str, AnyEffect] = {}
    result = []
    for command, events in given(*commands).history:
        if isinstance(command, FireTimer):
            outstanding.pop(command.timer_id, None)
        for event in events:
            state = evolve(state, event)
            for effect in react(state, event):
                if isinstance(effect, EnqueueTask):
                    outstanding[effect.msg_id] = effect
                elif isinstance(effect, ArmTimer):
                    outstanding[effect.timer_id] = effect
                elif isinstance(effect, CancelTimer):
                    outstanding.pop(effect.timer_id, None)
            if isinstance(event, StepCompleted | StepFailed | StepTimedOut):
                outstanding.pop(task_msg_id("r1", event.step_id, event.attempt, state.seed), None)
        result.append((state, dict(outstanding)))
    return result


SCENARIOS: dict[str, tuple[WorkflowDef, tuple[AnyCommand, ...]]] = {}


def _scenario(name: str, wf: WorkflowDef, *commands: AnyCommand) -> None:
    SCENARIOS[name] = (wf, (start(wf, {"n": 1}), *commands))


_scenario(
    "retries_and_timeouts",
    workflow(
        task("a", timeout_ms=3_000, retry=retry(3, initial_delay_ms=100)),
        task("b", "a", timeout_ms=9_000),
        task("c"),
        timeout_ms=600_000,
    ),
    started("a"),
    fail("a"),
    fire_retry("a", 2),
    fire_step_timeout("a", 2),
    fire_retry("a", 3),
    started("a", 3),
    complete("a", 1, attempt=3),
    started("c"),
    complete("b", 2),
    complete("c", 3),
)
_scenario(
    "fallback",
    workflow(task("a", on_failure="fix"), task("b", "a"), task("fix", timeout_ms=100)),
    fail("a", kind="non_retryable"),
    started("fix"),
    complete("fix", "ok"),
    complete("b", "done"),
)
_scenario(
    "saga",
    workflow(
        task("a", compensate="ua"),
        task("b", "a", compensate="ub", timeout_ms=1_000),
        task("c", "b"),
        task("ua"),
        task("ub", retry=retry(2)),
        timeout_ms=1_000_000,
    ),
    complete("a", "A"),
    complete("b", "B"),
    fail("c"),
    fail("ub"),
    fire_retry("ub", 2),
    complete("ub", attempt=2),
    complete("ua"),
)
_scenario(
    "cancelled",
    workflow(task("a", compensate="ua"), task("b", timeout_ms=5_000), task("ua")),
    complete("a"),
    cancel("enough"),
    complete("ua"),
)
_scenario(
    "run_timeout_with_limit",
    workflow(task("a"), task("b"), task("c"), max_concurrent_steps=1, timeout_ms=10_000),
    complete("a"),
    fire_run_timeout(),
)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_resume_after_every_decision_is_exactly_what_is_outstanding(name: str) -> None:
    wf, commands = SCENARIOS[name]
    assert wf.steps
    checked = 0
    for state, outstanding in _outstanding_after(commands):
        expected = dict(outstanding)
        if is_terminal(state):
            # Every timer was cancelled at the end; task messages already out stay out, and
            # their results decide to nothing.
            assert not any(isinstance(e, ArmTimer) for e in expected.values()), show(expected)
            expected = {}
        if state.status == "compensating":
            # The run timer is not re-armed while compensating: firing then does nothing.
            expected.pop("run_timeout", None)
        derived = resume(state)
        keys = [e.msg_id if isinstance(e, EnqueueTask) else _timer_id(e) for e in derived]
        assert len(keys) == len(set(keys)), f"resume repeats an effect: {show(derived)}"
        assert {key: show(unstamped(e)) for key, e in zip(keys, derived, strict=True)} == {
            key: show(unstamped(e)) for key, e in expected.items()
        }, f"after {state.event_count} events ({state.status})"
        checked += 1
    assert checked == len(commands)
    assert _outstanding_after(commands)[-1][0].status in ("completed", "failed", "cancelled")


def _timer_id(effect: AnyEffect) -> str:
    assert isinstance(effect, ArmTimer | CancelTimer), show(effect)
    return effect.timer_id


def test_decided_events_never_arm_more_timers_than_the_limit() -> None:
    wf = workflow(*(task(f"s{i}", timeout_ms=10) for i in range(50)), timeout_ms=100)
    events = decided_events(INITIAL_STATE, start(wf, at_ms=1))
    state = INITIAL_STATE
    armed = 0
    for event in events:
        state = evolve(state, event)
        armed += sum(isinstance(e, ArmTimer) for e in react(state, event))
    assert armed == 51 <= limits.timers_per_run_max


def test_every_task_message_carries_the_history_size_when_it_was_decided() -> None:
    wf = workflow(task("a"), task("b", "a"))
    started = decide(INITIAL_STATE, start(wf, {"q": 1}))
    assert not isinstance(started, Rejection)
    state = INITIAL_STATE
    stamps: list[int] = []
    for event in started:
        state = evolve(state, event)
        stamps += [e.history_events for e in react(state, event) if isinstance(e, EnqueueTask)]
    assert stamps == [state.event_count] and state.event_count >= 2
    resumed = [e for e in resume(state) if isinstance(e, EnqueueTask)]
    assert [e.history_events for e in resumed] == [state.event_count]
    assert all(e.history_events > 0 for e in resumed), "never the unstamped default"
