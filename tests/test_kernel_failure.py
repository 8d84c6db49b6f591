"""Given/when/then examples of failure: retries and backoff, timeouts, on_failure, saga
compensation and cancellation."""

from __future__ import annotations

import pytest
from hypothesis import given as for_all
from hypothesis import settings
from hypothesis import strategies as st

from kernel import limits
from kernel.commands import FailureKind
from kernel.events import (
    CompensationStarted,
    ErrorInfo,
    RunCancelled,
    RunCancelRequested,
    RunCompleted,
    RunFailed,
    StepCompensated,
    StepCompleted,
    StepFailed,
    StepRecovered,
    StepRetryScheduled,
    StepScheduled,
    StepTimedOut,
)
from kernel.retry import backoff_ms, unit_interval
from kernel.workflow import RetryPolicy, RetryStrategy
from tests.kernel_dsl import (
    cancel,
    complete,
    fail,
    fire_retry,
    fire_run_timeout,
    fire_step_timeout,
    given,
    raw,
    retry,
    start,
    started,
    task,
    workflow,
)

# --- retries ------------------------------------------------------------------------------


def test_a_retryable_failure_schedules_the_next_attempt_after_the_backoff() -> None:
    wf = workflow(task("a", retry=retry(3, initial_delay_ms=500)))
    when = given(start(wf), started("a")).when(fail("a", "flaky"))
    t = when.at_ms
    when.then(
        StepFailed(
            step_id="a", attempt=1, error=ErrorInfo(message="flaky"), will_retry=True, at_ms=t
        ),
        StepRetryScheduled(step_id="a", attempt=2, delay_ms=500, due_at_ms=t + 500, at_ms=t),
    ).then_lacks(RunFailed).then_state(status="running", steps={"a": "retry_wait"})
    assert when.state.steps[0].retry_at_ms == t + 500


def test_the_retry_timer_schedules_the_next_attempt_with_the_same_input() -> None:
    wf = workflow(task("a", retry=retry(3)))
    waiting = given(start(wf, {"in": 1}), fail("a"))
    when = waiting.when(fire_retry("a", 2))
    when.then(StepScheduled(step_id="a", attempt=2, input=raw({"in": 1}), at_ms=when.at_ms))
    when.then_state(steps={"a": "scheduled"})
    waiting.when(fire_retry("a", 3)).then_nothing()  # not the attempt that is due
    given(start(wf), fail("a"), fire_retry("a", 2)).when(fire_retry("a", 2)).then_nothing()


def test_attempts_never_exceed_max_attempts() -> None:
    wf = workflow(task("a", retry=retry(3)))
    third = given(
        start(wf), fail("a"), fire_retry("a", 2), fail("a", attempt=2), fire_retry("a", 3)
    )
    when = third.when(fail("a", "last", attempt=3))
    error = ErrorInfo(message="last")
    when.then(
        StepFailed(step_id="a", attempt=3, error=error, will_retry=False, at_ms=when.at_ms),
        RunFailed(error=error, failed_step_id="a", at_ms=when.at_ms),
    ).then_lacks(StepRetryScheduled).then_state(status="failed")
    assert when.state.steps[0].attempt == 3
    # Attempt 2 failing still retries.
    second = given(start(wf), fail("a"), fire_retry("a", 2)).when(fail("a", attempt=2))
    second.then_includes(
        StepRetryScheduled(
            step_id="a", attempt=3, delay_ms=1000, due_at_ms=second.at_ms + 1000, at_ms=second.at_ms
        )
    )


def test_no_retry_policy_means_one_attempt() -> None:
    when = given(start(workflow(task("a")))).when(fail("a"))
    when.then_lacks(StepRetryScheduled).then_includes(
        RunFailed(error=ErrorInfo(message="boom"), failed_step_id="a", at_ms=when.at_ms)
    )


def test_the_workflow_default_retry_applies_to_steps_without_their_own() -> None:
    wf = workflow(task("a"), task("b", retry=retry(1)), default_retry=retry(2, initial_delay_ms=7))
    when = given(start(wf)).when(fail("a"))
    when.then_includes(
        StepRetryScheduled(
            step_id="a", attempt=2, delay_ms=7, due_at_ms=when.at_ms + 7, at_ms=when.at_ms
        )
    )
    given(start(wf)).when(fail("b")).then_lacks(StepRetryScheduled).then_state(status="failed")


@pytest.mark.parametrize("kind", ["non_retryable", "invalid_output"])
def test_a_non_retryable_failure_is_not_retried(kind: FailureKind) -> None:
    wf = workflow(task("a", retry=retry(5)))
    when = given(start(wf)).when(fail("a", "no", kind=kind))
    error = ErrorInfo(message="no", kind=kind)
    when.then(
        StepFailed(step_id="a", attempt=1, error=error, will_retry=False, at_ms=when.at_ms),
        RunFailed(error=error, failed_step_id="a", at_ms=when.at_ms),
    ).then_lacks(StepRetryScheduled)


def test_a_heartbeat_timeout_is_a_lost_attempt_run_again_at_once() -> None:
    wf = workflow(task("a", retry=retry(2)))
    given(start(wf)).when(fail("a", "silent", kind="heartbeat_timeout")).then_includes(
        StepScheduled(step_id="a", attempt=2, input=raw(None), at_ms=2000)
    ).then_lacks(StepRetryScheduled).then_lacks(StepFailed)  # tests/test_kernel_lost.py


def test_a_worker_retry_after_replaces_the_backoff() -> None:
    wf = workflow(task("a", retry=retry(3, initial_delay_ms=60_000)))
    when = given(start(wf)).when(fail("a", retry_after_ms=250))
    when.then_includes(
        StepRetryScheduled(
            step_id="a", attempt=2, delay_ms=250, due_at_ms=when.at_ms + 250, at_ms=when.at_ms
        )
    ).then_lacks(StepRetryScheduled, delay_ms=60_000)


def test_a_worker_retry_after_does_not_add_attempts() -> None:
    wf = workflow(task("a", retry=retry(1)))
    given(start(wf)).when(fail("a", retry_after_ms=5)).then_lacks(StepRetryScheduled).then_state(
        status="failed"
    )
    wf2 = workflow(task("a", retry=retry(4)))
    given(start(wf2)).when(fail("a", kind="non_retryable", retry_after_ms=5)).then_lacks(
        StepRetryScheduled
    )


def test_a_worker_retry_after_is_clamped_to_the_delay_limit() -> None:
    wf = workflow(task("a", retry=retry(2)))
    when = given(start(wf)).when(fail("a", retry_after_ms=limits.delay_ms_max * 2))
    retried = when.events[1]
    assert isinstance(retried, StepRetryScheduled) and retried.delay_ms == limits.delay_ms_max
    negative = given(start(wf)).when(fail("a", retry_after_ms=-5)).events[1]
    assert isinstance(negative, StepRetryScheduled) and negative.delay_ms == 0


# --- backoff ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "delays"),
    [
        ("fixed", [100, 100, 100, 100]),
        ("linear", [100, 200, 300, 400]),
        ("exponential", [100, 300, 900, 2700]),
    ],
)
def test_backoff_strategies(strategy: RetryStrategy, delays: list[int]) -> None:
    policy = retry(10, strategy, initial_delay_ms=100, multiplier=3.0)
    assert [backoff_ms(policy, attempt, seed=0) for attempt in (1, 2, 3, 4)] == delays


def test_backoff_is_capped_at_max_delay() -> None:
    policy = retry(10, "exponential", initial_delay_ms=100, max_delay_ms=1_000)
    assert [backoff_ms(policy, n, 0) for n in range(1, 7)] == [100, 200, 400, 800, 1000, 1000]
    uncapped = retry(200, "exponential", initial_delay_ms=1_000, multiplier=100.0)
    assert backoff_ms(uncapped, 100, 0) == limits.delay_ms_max


def test_the_backoff_schedules_the_retry_through_decide() -> None:
    wf = workflow(task("a", retry=retry(4, "linear", initial_delay_ms=10)))
    state = given(start(wf), fail("a"), fire_retry("a", 2))
    when = state.when(fail("a", attempt=2))
    when.then_includes(
        StepRetryScheduled(
            step_id="a", attempt=3, delay_ms=20, due_at_ms=when.at_ms + 20, at_ms=when.at_ms
        )
    )


def test_jitter_is_deterministic_by_seed_and_varies_with_it() -> None:
    policy = retry(5, initial_delay_ms=10_000, jitter=0.5)
    assert backoff_ms(policy, 1, seed=42) == backoff_ms(policy, 1, seed=42)
    assert len({backoff_ms(policy, 1, seed=seed) for seed in range(20)}) > 10
    wf = workflow(task("a", retry=policy))
    first = given(start(wf)).when(fail("a", seed=42)).events[1]
    again = given(start(wf)).when(fail("a", seed=42)).events[1]
    other = given(start(wf)).when(fail("a", seed=43)).events[1]
    assert isinstance(first, StepRetryScheduled) and isinstance(other, StepRetryScheduled)
    assert first == again
    assert first.delay_ms == backoff_ms(policy, 1, 42)
    assert first.delay_ms != other.delay_ms


@settings(max_examples=200, deadline=None)
@for_all(
    seed=st.integers(min_value=0, max_value=2**64 - 1),
    jitter=st.floats(min_value=0.0, max_value=1.0),
    initial=st.integers(min_value=0, max_value=10**9),
    attempt=st.integers(min_value=1, max_value=100),
    strategy=st.sampled_from(["fixed", "linear", "exponential"]),
)
def test_jitter_stays_within_its_fraction_of_the_delay(
    seed: int, jitter: float, initial: int, attempt: int, strategy: RetryStrategy
) -> None:
    plain = RetryPolicy(max_attempts=100, strategy=strategy, initial_delay_ms=initial)
    jittered = RetryPolicy(
        max_attempts=100, strategy=strategy, initial_delay_ms=initial, jitter=jitter
    )
    base = backoff_ms(plain, attempt, seed)
    delay = backoff_ms(jittered, attempt, seed)
    assert 0 <= delay <= limits.delay_ms_max
    assert base * (1 - jitter) - 1 <= delay <= base * (1 + jitter) + 1
    assert 0.0 <= unit_interval(seed) < 1.0


# --- step timeouts ------------------------------------------------------------------------


def test_a_step_timeout_fails_the_attempt_and_retries() -> None:
    wf = workflow(task("a", timeout_ms=5_000, retry=retry(2, initial_delay_ms=100)))
    when = given(start(wf), started("a")).when(fire_step_timeout("a", 1, at_ms=6_000))
    error = ErrorInfo(message="attempt 1 timed out", kind="timeout")
    when.then(
        StepTimedOut(step_id="a", attempt=1, will_retry=True, at_ms=6_000, error=error),
        StepRetryScheduled(step_id="a", attempt=2, delay_ms=100, due_at_ms=6_100, at_ms=6_000),
    ).then_lacks(StepFailed)


def test_each_attempt_has_its_own_deadline() -> None:
    wf = workflow(task("a", timeout_ms=5_000, retry=retry(2, initial_delay_ms=100)))
    given().when(start(wf, at_ms=1_000)).then_includes(
        StepScheduled(step_id="a", attempt=1, input=raw(None), at_ms=1_000, deadline_ms=6_000)
    )
    state = given(start(wf, at_ms=1_000), fire_step_timeout("a", 1, at_ms=6_000))
    state.when(fire_retry("a", 2, at_ms=6_100)).then(
        StepScheduled(step_id="a", attempt=2, input=raw(None), at_ms=6_100, deadline_ms=11_100)
    )


def test_the_timeout_of_a_superseded_attempt_does_nothing() -> None:
    wf = workflow(task("a", timeout_ms=5_000, retry=retry(3)))
    state = given(start(wf), fail("a"), fire_retry("a", 2))
    state.when(fire_step_timeout("a", 1)).then_nothing()
    state.when(fire_step_timeout("a", 2)).then_includes(
        StepTimedOut(
            step_id="a",
            attempt=2,
            will_retry=True,
            at_ms=state.next_at_ms,
            error=ErrorInfo(message="attempt 2 timed out", kind="timeout"),
        )
    )


def test_the_timeout_of_a_completed_step_does_nothing() -> None:
    wf = workflow(task("a", timeout_ms=5_000), task("b", "a"))
    given(start(wf), complete("a")).when(fire_step_timeout("a", 1)).then_nothing()


def test_a_timeout_without_attempts_left_fails_the_run() -> None:
    wf = workflow(task("a", timeout_ms=5_000))
    when = given(start(wf)).when(fire_step_timeout("a", 1))
    error = ErrorInfo(message="attempt 1 timed out", kind="timeout")
    when.then(
        StepTimedOut(step_id="a", attempt=1, will_retry=False, at_ms=when.at_ms, error=error),
        RunFailed(error=error, failed_step_id="a", at_ms=when.at_ms),
    )


# --- the workflow timeout -----------------------------------------------------------------


def test_the_workflow_timeout_fails_a_running_run() -> None:
    wf = workflow(task("a"), task("b", "a"), timeout_ms=60_000)
    when = given(start(wf), complete("a")).when(fire_run_timeout(at_ms=61_000))
    error = ErrorInfo(message="run timed out after 60000 ms", kind="timeout")
    when.then(RunFailed(error=error, failed_step_id="", at_ms=61_000)).then_state(
        status="failed", steps={"b": "scheduled"}
    )


def test_the_workflow_timeout_of_a_finished_run_does_nothing() -> None:
    wf = workflow(task("a"), timeout_ms=60_000)
    given(start(wf), complete("a")).when(fire_run_timeout()).then_nothing()
    given(start(wf), fire_run_timeout()).when(fire_run_timeout()).then_nothing()


def test_the_workflow_timeout_compensates_completed_steps() -> None:
    wf = workflow(task("a", compensate="undo"), task("b", "a"), task("undo"), timeout_ms=10)
    when = given(start(wf), complete("a", 1)).when(fire_run_timeout())
    when.then_includes(
        CompensationStarted(
            steps=("a",),
            outcome="failed",
            error=ErrorInfo(message="run timed out after 10 ms", kind="timeout"),
            at_ms=when.at_ms,
        )
    ).then_lacks(RunFailed).then_state(status="compensating")


# --- on_failure ---------------------------------------------------------------------------

FALLBACK = workflow(task("a", on_failure="fix"), task("b", "a"), task("fix"))


def test_a_failed_step_runs_its_fallback_with_the_failure() -> None:
    when = given(start(FALLBACK)).when(fail("a", "bad", kind="non_retryable"))
    error = ErrorInfo(message="bad", kind="non_retryable")
    when.then(
        StepFailed(step_id="a", attempt=1, error=error, will_retry=False, at_ms=when.at_ms),
        StepScheduled(
            step_id="fix",
            attempt=1,
            input=raw({"failed_step": "a", "error": {"message": "bad", "kind": "non_retryable"}}),
            at_ms=when.at_ms,
        ),
    ).then_lacks(RunFailed).then_state(status="running", steps={"a": "failed", "b": "pending"})


def test_the_fallback_does_not_run_unless_its_step_fails() -> None:
    given().when(start(FALLBACK)).then_lacks(StepScheduled, step_id="fix")
    when = given(start(FALLBACK), complete("a", 1)).when(complete("b", 2))
    when.then_includes(RunCompleted(output=raw(2), at_ms=when.at_ms)).then_lacks(
        StepScheduled, step_id="fix"
    ).then_state(steps={"fix": "pending"})


def test_the_fallback_runs_only_after_the_retries_are_spent() -> None:
    wf = workflow(task("a", on_failure="fix", retry=retry(2)), task("fix"))
    given(start(wf)).when(fail("a")).then_lacks(StepScheduled, step_id="fix")
    when = given(start(wf), fail("a"), fire_retry("a", 2)).when(fail("a", attempt=2))
    when.then_includes(
        StepScheduled(
            step_id="fix",
            attempt=1,
            input=raw({"failed_step": "a", "error": {"message": "boom", "kind": "error"}}),
            at_ms=when.at_ms,
        )
    )


def test_a_completed_fallback_recovers_the_step_and_the_run_goes_on() -> None:
    when = given(start(FALLBACK), fail("a")).when(complete("fix", {"plan": "B"}))
    t = when.at_ms
    when.then(
        StepCompleted(step_id="fix", attempt=1, output=raw({"plan": "B"}), at_ms=t),
        StepRecovered(step_id="a", handler_step_id="fix", output=raw({"plan": "B"}), at_ms=t),
        StepScheduled(step_id="b", attempt=1, input=raw({"plan": "B"}), at_ms=t),
    ).then_state(status="running", steps={"a": "recovered", "fix": "completed"})
    assert when.state.steps[0].output == raw({"plan": "B"})
    done = given(start(FALLBACK), fail("a"), complete("fix", 1)).when(complete("b", "end"))
    done.then_includes(RunCompleted(output=raw("end"), at_ms=done.at_ms))


def test_a_failing_fallback_fails_the_run() -> None:
    when = given(start(FALLBACK), fail("a", "first")).when(fail("fix", "second"))
    t = when.at_ms
    handler_error = ErrorInfo(
        message="on_failure handler 'fix' of step 'a' failed: second", kind="handler_failed"
    )
    when.then(
        StepFailed(
            step_id="fix", attempt=1, error=ErrorInfo(message="second"), will_retry=False, at_ms=t
        ),
        RunFailed(error=handler_error, failed_step_id="a", at_ms=t),
    ).then_lacks(StepRecovered).then_state(status="failed", failed_step_id="a")


# --- saga compensation --------------------------------------------------------------------

# a -> b -> c; a and b have compensations; c fails.
SAGA = workflow(
    task("a", compensate="undo_a"),
    task("b", "a", compensate="undo_b"),
    task("n", "a"),  # completed, but nothing to compensate
    task("c", "b", "n"),
    task("undo_a"),
    task("undo_b"),
)


SAGA_DONE = (start(SAGA), complete("a", "A"), complete("n", "N"), complete("b", "B"))
SAGA_COMPENSATING = (*SAGA_DONE, fail("c", "down"))


def test_a_failing_run_compensates_completed_steps_latest_first() -> None:
    when = given(*SAGA_DONE).when(fail("c", "down"))
    t = when.at_ms
    error = ErrorInfo(message="down")
    when.then(
        StepFailed(step_id="c", attempt=1, error=error, will_retry=False, at_ms=t),
        CompensationStarted(
            steps=("b", "a"), outcome="failed", error=error, failed_step_id="c", at_ms=t
        ),
        StepScheduled(
            step_id="undo_b", attempt=1, input=raw({"step_id": "b", "output": "B"}), at_ms=t
        ),
    ).then_lacks(StepScheduled, step_id="undo_a").then_lacks(RunFailed).then_state(
        status="compensating"
    )


def test_each_compensation_starts_the_next_then_the_run_fails() -> None:
    when = given(*SAGA_COMPENSATING).when(complete("undo_b"))
    t = when.at_ms
    when.then(
        StepCompleted(step_id="undo_b", attempt=1, output=raw(None), at_ms=t),
        StepCompensated(step_id="b", handler_step_id="undo_b", at_ms=t),
        StepScheduled(
            step_id="undo_a", attempt=1, input=raw({"step_id": "a", "output": "A"}), at_ms=t
        ),
    ).then_lacks(RunFailed).then_lacks(StepCompensated, step_id="a")
    last = given(*SAGA_COMPENSATING, complete("undo_b")).when(complete("undo_a"))
    last.then(
        StepCompleted(step_id="undo_a", attempt=1, output=raw(None), at_ms=last.at_ms),
        StepCompensated(step_id="a", handler_step_id="undo_a", at_ms=last.at_ms),
        RunFailed(error=ErrorInfo(message="down"), failed_step_id="c", at_ms=last.at_ms),
    ).then_state(status="failed", failed_step_id="c")
    assert all(s.compensated for s in last.state.steps if s.step_id in ("a", "b"))
    assert not any(s.compensated for s in last.state.steps if s.step_id not in ("a", "b"))


def test_a_failing_compensation_ends_the_run_as_compensate_failed() -> None:
    when = given(*SAGA_COMPENSATING).when(fail("undo_b", "cannot undo"))
    t = when.at_ms
    when.then(
        StepFailed(
            step_id="undo_b",
            attempt=1,
            error=ErrorInfo(message="cannot undo"),
            will_retry=False,
            at_ms=t,
        ),
        RunFailed(
            error=ErrorInfo(
                message="compensate handler 'undo_b' of step 'b' failed: cannot undo",
                kind="handler_failed",
            ),
            status="compensate_failed",
            failed_step_id="c",
            at_ms=t,
        ),
    ).then_lacks(StepScheduled, step_id="undo_a").then_state(status="compensate_failed")


def test_a_run_failing_before_anything_compensable_completed_fails_at_once() -> None:
    when = given(start(SAGA)).when(fail("a"))
    when.then_lacks(CompensationStarted).then_includes(
        RunFailed(error=ErrorInfo(message="boom"), failed_step_id="a", at_ms=when.at_ms)
    )


def test_a_step_finishing_while_the_run_compensates_changes_nothing_else() -> None:
    wf = workflow(task("a", compensate="undo_a"), task("b"), task("c"), task("undo_a"))
    compensating = given(start(wf), complete("a"), fail("b"))
    assert compensating.state.status == "compensating"
    compensating.when(fail("c")).then(
        StepFailed(
            step_id="c",
            attempt=1,
            error=ErrorInfo(message="boom"),
            will_retry=False,
            at_ms=compensating.next_at_ms,
        )
    ).then_state(status="compensating")
    compensating.when(fire_run_timeout()).then_nothing()


# --- cancellation -------------------------------------------------------------------------


def test_cancel_of_a_running_run_without_compensations_cancels_it() -> None:
    when = given(start(workflow(task("a"), task("b", "a")))).when(cancel("user asked"))
    t = when.at_ms
    when.then(
        RunCancelRequested(reason="user asked", at_ms=t),
        RunCancelled(reason="user asked", at_ms=t),
    ).then_lacks(RunFailed).then_state(status="cancelled", cancel_reason="user asked")


def test_cancel_with_compensations_compensates_then_ends_as_cancelled() -> None:
    wf = workflow(task("a", compensate="undo_a"), task("b", "a"), task("undo_a"))
    when = given(start(wf), complete("a", 1)).when(cancel("stop"))
    t = when.at_ms
    when.then(
        RunCancelRequested(reason="stop", at_ms=t),
        CompensationStarted(
            steps=("a",),
            outcome="cancelled",
            error=ErrorInfo(message="cancelled: stop", kind="cancelled"),
            at_ms=t,
        ),
        StepScheduled(
            step_id="undo_a", attempt=1, input=raw({"step_id": "a", "output": 1}), at_ms=t
        ),
    ).then_lacks(RunCancelled).then_state(status="compensating")
    done = given(start(wf), complete("a", 1), cancel("stop")).when(complete("undo_a"))
    done.then_includes(
        StepCompensated(step_id="a", handler_step_id="undo_a", at_ms=done.at_ms),
        RunCancelled(reason="stop", at_ms=done.at_ms),
    ).then_lacks(RunFailed).then_state(status="cancelled")


def test_cancel_of_a_finished_run_is_rejected_as_run_finished() -> None:
    one = workflow(task("a"))
    given(start(one), complete("a")).when(cancel()).then_rejected("run_finished")
    given(start(one), fail("a")).when(cancel()).then_rejected("run_finished")

def test_cancel_of_a_run_a_cancel_ended_decides_nothing() -> None:
    """A redelivered CancelRun (the engine died before acking it) is idempotent: ()."""
    one = workflow(task("a"))
    given(start(one), cancel()).when(cancel()).then_nothing()


def test_a_second_cancel_while_compensating_decides_nothing() -> None:
    wf = workflow(task("a", compensate="undo_a"), task("b", "a"), task("undo_a"))
    given(start(wf), complete("a"), cancel("one")).when(cancel("two")).then_nothing()


def test_cancel_while_compensating_a_failure_is_recorded_and_the_run_still_fails() -> None:
    when = given(*SAGA_COMPENSATING).when(cancel("late"))
    when.then(RunCancelRequested(reason="late", at_ms=when.at_ms)).then_state(
        status="compensating", compensation_outcome="failed"
    )


@pytest.mark.parametrize("how", ["fails", "times_out"])
def test_a_fallback_failing_while_the_run_compensates_decides_nothing_more(how: str) -> None:
    wf = workflow(
        task("a", compensate="undo_a"),
        task("b", on_failure="fix"),
        task("c"),
        task("fix", timeout_ms=1_000),
        task("undo_a"),
    )
    # b fails (its fallback starts), then c fails with no fallback: the run compensates a.
    compensating = given(start(wf), complete("a"), fail("b"), fail("c"))
    assert compensating.state.status == "compensating"
    command = fail("fix") if how == "fails" else fire_step_timeout("fix", 1)
    when = compensating.when(command)
    when.then_lacks(RunFailed).then_state(status="compensating", steps={"fix": "failed"})


def test_a_step_completing_while_the_run_compensates_is_compensated_too() -> None:
    # b was still running when c failed; it completes during compensation, so its effect
    # exists and is undone, latest completion first (it is not in CompensationStarted.steps).
    wf = workflow(
        task("a", compensate="ua"), task("b", compensate="ub"), task("c"), task("ua"), task("ub")
    )
    compensating = given(start(wf), complete("a", "A"), fail("c"))
    started_event = compensating.events[-2]
    assert isinstance(started_event, CompensationStarted) and started_event.steps == ("a",)
    compensating.when(complete("b", "B")).then(
        StepCompleted(step_id="b", attempt=1, output=raw("B"), at_ms=compensating.next_at_ms)
    ).then_lacks(StepScheduled)
    when = given(start(wf), complete("a", "A"), fail("c"), complete("b", "B")).when(complete("ua"))
    when.then(
        StepCompleted(step_id="ua", attempt=1, output=raw(None), at_ms=when.at_ms),
        StepCompensated(step_id="a", handler_step_id="ua", at_ms=when.at_ms),
        StepScheduled(
            step_id="ub", attempt=1, input=raw({"step_id": "b", "output": "B"}), at_ms=when.at_ms
        ),
    ).then_lacks(RunFailed)
