"""Given/when/then examples and properties of run lifecycle operations (kernel.reopen):
reopen in place, terminate, dead letters."""

from __future__ import annotations

import msgspec
from hypothesis import given as for_all
from hypothesis import settings
from hypothesis import strategies as st

from kernel import limits
from kernel.commands import AnyCommand, CancelRun, Rejection
from kernel.decide import decide
from kernel.effects import ArmTimer, EnqueueTask
from kernel.events import (
    AnyEvent,
    CompensationStarted,
    DeadLetterDiscarded,
    RunReopened,
    RunTerminated,
    StepRetryScheduled,
    StepScheduled,
)
from kernel.reducer import evolve, fold, fold_from
from kernel.reopen import dead_letters
from kernel.state import INITIAL_STATE, RunState
from tests.kernel_dsl import (
    RUN_ID,
    cancel,
    complete,
    fail,
    fire_retry,
    given,
    raw,
    retry,
    start,
    started,
    step_of,
    task,
    workflow,
)
from tests.lifecycle_dsl import discard, reopen, terminate

CHAIN = workflow(task("a"), task("b", "a"), task("c", "b"))
DIAMOND = workflow(task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c"))


def _failed_chain() -> tuple[AnyCommand, ...]:
    return (start(CHAIN, {"n": 1}), complete("a", "A"), fail("b", "boom", kind="non_retryable"))


# --- reopen -------------------------------------------------------------------------------


def test_a_failed_run_reopens_from_its_failed_step_keeping_earlier_outputs() -> None:
    when = given(*_failed_chain()).when(reopen())
    t = when.at_ms
    when.then(
        RunReopened(from_steps=("b",), reset=("b",), at_ms=t),
        StepScheduled(step_id="b", attempt=2, input=raw("A"), at_ms=t),
    ).then_state(status="running", steps={"a": "completed", "b": "scheduled", "c": "pending"})
    kept = when.state.step("a")
    assert kept is not None and kept.output == raw("A") and kept.attempt == 1
    assert when.state.error is None and when.state.ended_at_ms is None and when.state.reopens == 1
    tasks = [e for e in when.effects if isinstance(e, EnqueueTask)]
    ids = [t.msg_id for t in tasks]
    assert ids == [f"{RUN_ID}:b:2~00000000"], "a new attempt: a new message id"


def test_a_reopened_run_completes_and_its_policy_counts_afresh() -> None:
    wf = workflow(task("a", retry=retry(2)))
    items = (start(wf), fail("a", "x"), fire_retry("a", 2), fail("a", "x", attempt=2))
    assert given(*items).state.status == "failed"
    again = given(*items, reopen()).when(fail("a", "x", attempt=3))
    again.then_includes(
        StepRetryScheduled(
            step_id="a", attempt=4, delay_ms=1_000, due_at_ms=again.at_ms + 1_000, at_ms=again.at_ms
        )
    )
    again.then_state(status="running", steps={"a": "retry_wait"})
    done = given(*items, reopen()).when(complete("a", 7, attempt=3))
    done.then_state(status="completed", output=raw(7))


def test_reopen_from_a_step_resets_it_and_everything_downstream() -> None:
    items: tuple[AnyCommand, ...] = (start(DIAMOND), complete("a", 1), complete("b", 2))
    items = (*items, complete("c", 3))
    items = (*items, fail("d", "no", kind="non_retryable"))
    when = given(*items).when(reopen("b"))
    when.then_includes(RunReopened(from_steps=("b",), reset=("b", "d"), at_ms=when.at_ms))
    when.then_state(steps={"a": "completed", "b": "scheduled", "c": "completed", "d": "pending"})
    when.then_lacks(StepScheduled, step_id="a").then_lacks(StepScheduled, step_id="c")


def test_a_cancelled_run_reopens_its_unfinished_steps() -> None:
    items = (start(CHAIN), complete("a", "A"), started("b"), cancel("stop"))
    assert given(*items).state.status == "cancelled"
    when = given(*items).when(reopen())
    when.then_includes(RunReopened(from_steps=(), reset=("b",), at_ms=when.at_ms))
    when.then_state(status="running", cancel_reason=None, steps={"b": "scheduled"})


def test_a_compensated_step_runs_again_after_a_reopen() -> None:
    wf = workflow(task("a", compensate="undo"), task("b", "a"), task("undo"))
    items = (start(wf), complete("a", 1), fail("b", "no", kind="non_retryable"), complete("undo"))
    assert given(*items).state.status == "failed"
    when = given(*items).when(reopen())
    when.then_includes(RunReopened(from_steps=("b",), reset=("a", "b", "undo"), at_ms=when.at_ms))
    when.then_state(steps={"a": "scheduled", "b": "pending", "undo": "pending"})


def test_a_reopen_is_refused_for_a_running_or_completed_run() -> None:
    given(start(CHAIN)).when(reopen()).then_rejected("invalid")
    done = (start(workflow(task("a"))), complete("a", 1))
    given(*done).when(reopen()).then_rejected("run_finished")


def test_a_reopen_names_an_unknown_step_or_a_handler_in_its_refusal() -> None:
    given(*_failed_chain()).when(reopen("nope")).then_rejected("unknown_step")
    wf = workflow(task("a", on_failure="fix"), task("fix"))
    items = (
        start(wf),
        fail("a", "x", kind="non_retryable"),
        fail("fix", "y", kind="non_retryable"),
    )
    given(*items).when(reopen("fix")).then_rejected("invalid")


def test_a_redelivered_reopen_decides_nothing() -> None:
    items = (*_failed_chain(), reopen())
    given(*items).when(reopen()).then_nothing()  # its count is stale: it applied already


def test_a_step_with_its_own_state_is_not_reset() -> None:
    gate = step_of("gate", "approval", {"question": "ok?"})
    wf = workflow(task("a"), msgspec.structs.replace(gate, depends_on=("a",)))
    items = (start(wf), complete("a", 1), cancel("no"))
    when = given(*items).when(reopen())
    when.then_rejected("invalid")
    assert isinstance(when.result, Rejection) and "rerun" in when.result.message


def test_reopens_are_bounded() -> None:
    items: list[AnyCommand] = [start(workflow(task("a")))]
    for index in range(limits.reopens_max):
        items.append(fail("a", "x", kind="non_retryable", attempt=index + 1))
        items.append(reopen(reopens=index))
    items.append(fail("a", "x", kind="non_retryable", attempt=limits.reopens_max + 1))
    given(*items).when(reopen(reopens=limits.reopens_max)).then_rejected("invalid")


def test_a_reopened_run_arms_its_timeout_from_the_reopen() -> None:
    wf = workflow(task("a"), timeout_ms=60_000)
    items = (start(wf), fail("a", "x", kind="non_retryable"))
    when = given(*items).when(reopen())
    timers = [e for e in when.effects if isinstance(e, ArmTimer) and e.timer_id == "run_timeout"]
    assert [timer.fire_at_ms for timer in timers] == [when.at_ms + 60_000]


# --- terminate ----------------------------------------------------------------------------


def test_terminate_ends_a_run_at_once_without_compensation() -> None:
    wf = workflow(task("a", compensate="undo"), task("b", "a"), task("undo"))
    items = (start(wf), complete("a", 1), started("b"))
    when = given(*items).when(terminate("provider gone"))
    when.then(RunTerminated(reason="provider gone", at_ms=when.at_ms))
    when.then_lacks(CompensationStarted).then_state(status="terminated")
    assert when.state.error is not None and "provider gone" in when.state.error.message


def test_terminate_ends_a_compensating_run() -> None:
    wf = workflow(task("a", compensate="undo"), task("b", "a"), task("undo"))
    items = (start(wf), complete("a", 1), fail("b", "no", kind="non_retryable"))
    assert given(*items).state.status == "compensating"
    given(*items).when(terminate()).then_state(status="terminated")


def test_terminate_is_refused_for_an_ended_run() -> None:
    given(*_failed_chain()).when(terminate()).then_rejected("run_finished")


# --- dead letters -------------------------------------------------------------------------


def test_a_step_failed_for_good_is_one_dead_letter_with_its_exact_input() -> None:
    state = given(*_failed_chain()).state
    [letter] = dead_letters(state)
    assert (letter.step_id, letter.attempt, letter.attempts, letter.task) == ("b", 1, 1, "b")
    assert letter.input == raw("A") and letter.error is not None
    assert letter.error.message == "boom"


def test_a_retried_step_is_one_dead_letter_counting_its_attempts() -> None:
    wf = workflow(task("a", retry=retry(3)))
    items: tuple[AnyCommand, ...] = (start(wf), fail("a", "x"), fire_retry("a", 2))
    items = (*items, fail("a", "x", attempt=2), fire_retry("a", 3), fail("a", "x", attempt=3))
    [letter] = dead_letters(given(*items).state)
    assert (letter.attempt, letter.attempts) == (3, 3)


def test_a_discarded_dead_letter_leaves_the_list_once() -> None:
    when = given(*_failed_chain()).when(discard("b", 1))
    when.then(DeadLetterDiscarded(step_id="b", attempt=1, at_ms=when.at_ms))
    assert dead_letters(when.state) == () and when.state.status == "failed"
    given(*_failed_chain(), discard("b", 1)).when(discard("b", 1)).then_nothing()
    given(*_failed_chain()).when(discard("a", 1)).then_rejected("unknown_step")


def test_a_dead_letter_leaves_the_list_when_its_step_runs_again() -> None:
    state = given(*_failed_chain(), reopen()).state
    assert dead_letters(state) == ()


def test_a_recovered_step_is_no_dead_letter() -> None:
    wf = workflow(task("a", on_failure="fix"), task("fix"))
    items = (start(wf), fail("a", "x", kind="non_retryable"), complete("fix", 1))
    assert dead_letters(given(*items).state) == ()


# --- properties ---------------------------------------------------------------------------


def _choices(state: RunState) -> list[AnyCommand]:
    """Commands that may apply now, so the histories are reachable."""
    at = state.event_count * 1_000 + 10_000
    commands: list[AnyCommand] = []
    for step in state.steps:
        if step.status in ("scheduled", "running"):
            commands.append(complete(step.step_id, step.step_id, attempt=step.attempt, at_ms=at))
            commands.append(
                fail(step.step_id, "x", kind="non_retryable", attempt=step.attempt, at_ms=at)
            )
    if state.status == "running":
        commands.append(CancelRun(run_id=RUN_ID, at_ms=at, reason="stop"))
        commands.append(terminate(at_ms=at))
    if state.status in ("failed", "cancelled", "terminated"):
        commands.append(reopen(reopens=state.reopens, at_ms=at))
        for step_id in state.step_ids:
            commands.append(reopen(step_id, reopens=state.reopens, at_ms=at))
    return commands


@settings(max_examples=150, deadline=None)
@for_all(st.data())
def test_replay_of_a_reopened_run_equals_its_live_state(data: st.DataObject) -> None:
    state = INITIAL_STATE
    events: list[AnyEvent] = []
    decided = decide(state, start(DIAMOND, at_ms=1_000))
    assert not isinstance(decided, Rejection)
    for _ in range(40):
        for event in decided:
            state = evolve(state, event)
        events.extend(decided)
        choices = _choices(state)
        if not choices:
            break
        command = data.draw(st.sampled_from(choices))
        before = state
        decided_now = decide(state, command)
        if isinstance(decided_now, Rejection):
            decided = ()
            continue
        decided = decided_now
        reopened = [e for e in decided if isinstance(e, RunReopened)]
        if reopened:
            kept = {
                s.step_id for s in before.steps if s.step_id not in reopened[0].reset
                and s.status in ("completed", "skipped", "recovered")
            }  # fmt: skip
            scheduled = {e.step_id for e in decided if isinstance(e, StepScheduled)}
            assert not kept & scheduled, f"kept steps ran again: {kept & scheduled}"
            after = fold_from(before, decided)
            assert all(before.step(k) == after.step(k) for k in kept), "kept steps unchanged"
    assert fold(events) == state, "replay equals the live state"
    split = len(events) // 2
    assert fold_from(fold(events[:split]), events[split:]) == state, "the fold splits"
    for step in state.steps:
        assert step.attempt - step.attempt_base <= limits.attempts_per_reopen_max


@settings(max_examples=100, deadline=None)
@for_all(st.data())
def test_completed_steps_before_the_reopen_point_never_run_again(data: st.DataObject) -> None:
    state = given(start(DIAMOND)).state
    outputs: dict[str, msgspec.Raw] = {}
    for _ in range(30):
        choices = _choices(state)
        if not choices:
            break
        command = data.draw(st.sampled_from(choices))
        decided = decide(state, command)
        if isinstance(decided, Rejection):
            continue
        reset: set[str] = set()
        for event in decided:
            if isinstance(event, RunReopened):
                reset = set(event.reset)
                for step_id in reset:
                    outputs.pop(step_id, None)
            if isinstance(event, StepScheduled):
                assert event.step_id not in outputs, f"{event.step_id} ran again after completing"
            state = evolve(state, event)
        for step in state.steps:
            if step.status == "completed":
                assert outputs.setdefault(step.step_id, step.output) == step.output
