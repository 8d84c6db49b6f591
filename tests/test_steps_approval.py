"""Given/when/then for the `approval` step type (steps/approvals.py): approve, reject with
on_failure, each on_timeout, a second decision, resume, and the kernel properties."""

from __future__ import annotations

import msgspec
from hypothesis import given as hypothesis_given
from hypothesis import settings
from hypothesis import strategies as st

from kernel.commands import FireTimer, Rejection, ResolveApproval
from kernel.decide import decide
from kernel.effects import ArmTimer, CancelTimer, PublishNotice
from kernel.events import (
    AnyEvent,
    ApprovalRequested,
    ApprovalResolved,
    RunFailed,
    StepCompleted,
    StepFailed,
    StepScheduled,
)
from kernel.react import resume
from kernel.reducer import fold, fold_from
from kernel.state import is_terminal
from kernel.workflow import StepDef, WorkflowDef
from steps import approvals
from tests.kernel_dsl import (
    RUN_ID,
    UNSTAMPED,
    complete,
    given,
    raw,
    retry,
    start,
    step_of,
    task,
    workflow,
)

HOUR_MS = 3_600_000


def gate(
    *depends_on: str,
    on_timeout: str = "fail",
    timeout_ms: int | None = None,
    on_failure: str | None = None,
) -> StepDef:
    config = {"question": "Ship it?", "description": "release 1.2", "on_timeout": on_timeout}
    return StepDef(
        id="gate",
        type="approval",
        depends_on=depends_on,
        config=raw(config),
        metadata=raw({"team": "ops"}),
        timeout_ms=timeout_ms,
        on_failure=on_failure,
    )


def resolve(
    decision: str,
    *,
    by: str = "ana",
    comment: str = "",
    data: object = None,
    step_id: str = "gate",
    at_ms: int = UNSTAMPED,
) -> ResolveApproval:
    return ResolveApproval(
        run_id=RUN_ID,
        at_ms=at_ms,
        step_id=step_id,
        decision=decision,  # type: ignore[arg-type]
        by=by,
        comment=comment,
        data=raw(data),
    )


def fire_deadline(attempt: int = 1, *, at_ms: int = UNSTAMPED) -> FireTimer:
    return FireTimer(
        run_id=RUN_ID,
        at_ms=at_ms,
        timer_id=approvals.timer_id("gate", attempt),
        kind="step",
        step_id="gate",
        attempt=attempt,
    )


GATED = workflow(task("build"), gate("build"), task("ship", "gate"))


def test_an_approval_halts_records_the_request_and_publishes_a_notice_without_input() -> None:
    when = given(start(GATED)).when(complete("build", {"secret": "s3cr3t"}))
    at = when.at_ms
    when.then_includes(
        StepScheduled(step_id="gate", attempt=1, input=raw({"secret": "s3cr3t"}), at_ms=at),
        ApprovalRequested(
            step_id="gate",
            key="gate",
            attempt=1,
            question="Ship it?",
            description="release 1.2",
            metadata=raw({"team": "ops"}),
            at_ms=at,
        ),
    ).then_lacks(StepScheduled, step_id="ship")
    notices = [e for e in when.effects if isinstance(e, PublishNotice)]
    assert len(notices) == 1 and notices[0].topic == "approval"
    notice = msgspec.json.decode(bytes(notices[0].payload), type=approvals.ApprovalNotice)
    assert notice.question == "Ship it?" and notice.key == "gate" and notice.step_id == "gate"
    assert b"s3cr3t" not in msgspec.json.encode(notices[0]), "the notice carries no input"
    assert approvals.pending(when.state)[0].key == "gate"


def test_approve_completes_the_step_with_the_data_and_records_who_and_when() -> None:
    when = given(start(GATED), complete("build", 1)).when(
        resolve("approve", by="ana", comment="lgtm", data={"ticket": 7})
    )
    at = when.at_ms
    when.then(
        ApprovalResolved(
            step_id="gate",
            key="gate",
            decision="approve",
            by="ana",
            comment="lgtm",
            data=raw({"ticket": 7}),
            at_ms=at,
        ),
        StepCompleted(step_id="gate", attempt=1, output=raw({"ticket": 7}), at_ms=at),
        StepScheduled(step_id="ship", attempt=1, input=raw({"ticket": 7}), at_ms=at),
    )
    approval = approvals.find(when.state, "gate")
    assert approval is not None and (approval.by, approval.resolved_at_ms) == ("ana", at)
    assert approvals.pending(when.state) == ()


def test_reject_fails_the_step_without_retry_and_on_failure_applies() -> None:
    wf = workflow(
        task("build"),
        gate("build", on_failure="notify"),
        task("ship", "gate"),
        task("notify"),
        default_retry=retry(5),  # a retry policy does not retry a rejection
    )
    when = given(start(wf), complete("build")).when(resolve("reject", by="bo", comment="no"))
    failed = [e for e in when.events if isinstance(e, StepFailed)]
    assert failed and not failed[0].will_retry and failed[0].error.kind == "non_retryable"
    assert "rejected by bo: no" in failed[0].error.message
    when.then_includes(
        StepScheduled(
            step_id="notify",
            attempt=1,
            at_ms=when.at_ms,
            input=raw(
                {
                    "failed_step": "gate",
                    "error": {
                        "message": "approval 'gate' rejected by bo: no",
                        "kind": "non_retryable",
                    },
                }
            ),
        )
    ).then_state(steps={"gate": "failed", "notify": "scheduled"}, status="running")


def test_reject_without_on_failure_fails_the_run() -> None:
    when = given(start(GATED), complete("build")).when(resolve("reject"))
    assert isinstance(when.events[-1], RunFailed)
    when.then_state(status="failed", failed_step_id="gate")


def test_a_second_decision_is_rejected_naming_who_decided_and_when() -> None:
    first = given(start(GATED), complete("build"), resolve("approve", by="ana"))
    resolved_at = first.last_at_ms
    for decision in ("approve", "reject"):
        then = first.when(resolve(decision, by="bo")).then_rejected("already_resolved")
        message = then.result.message  # type: ignore[union-attr]
        assert f"already resolved by ana at {resolved_at}" in message, message


def test_a_decision_for_an_unknown_approval_is_rejected() -> None:
    given(start(GATED)).when(resolve("approve", step_id="ship")).then_rejected("unknown_step")
    given(start(GATED)).when(resolve("approve")).then_rejected("unknown_step")  # not asked yet


def test_the_timeout_is_a_durable_timer_cancelled_by_a_decision() -> None:
    wf = workflow(task("build"), gate("build", timeout_ms=HOUR_MS), task("ship", "gate"))
    asked = given(start(wf)).when(complete("build"))
    timers = [e for e in asked.effects if isinstance(e, ArmTimer)]
    assert [(t.timer_id, t.fire_at_ms) for t in timers] == [
        (approvals.timer_id("gate", 1), asked.at_ms + HOUR_MS)
    ]
    step = asked.state.step("gate")
    assert step is not None and step.deadline_ms is None, "no attempt deadline"
    decided = given(start(wf), complete("build")).when(resolve("approve"))
    assert CancelTimer(run_id=RUN_ID, timer_id=approvals.timer_id("gate", 1)) in decided.effects


def test_on_timeout_approve_completes_the_step() -> None:
    wf = workflow(task("build"), gate("build", on_timeout="approve", timeout_ms=HOUR_MS))
    when = given(start(wf), complete("build")).when(fire_deadline())
    resolved = when.events[0]
    assert isinstance(resolved, ApprovalResolved)
    assert (resolved.decision, resolved.by, resolved.timed_out) == ("approve", "timeout", True)
    when.then_state(status="completed", steps={"gate": "completed"})


def test_on_timeout_reject_fails_the_step_as_rejected() -> None:
    wf = workflow(task("build"), gate("build", on_timeout="reject", timeout_ms=HOUR_MS))
    when = given(start(wf), complete("build")).when(fire_deadline())
    failed = [e for e in when.events if isinstance(e, StepFailed)]
    assert (
        failed[0].error.kind == "non_retryable" and "rejected by timeout" in failed[0].error.message
    )
    when.then_state(status="failed")


def test_on_timeout_fail_fails_the_step_as_timed_out() -> None:
    wf = workflow(task("build"), gate("build", on_timeout="fail", timeout_ms=HOUR_MS))
    when = given(start(wf), complete("build")).when(fire_deadline())
    failed = [e for e in when.events if isinstance(e, StepFailed)]
    assert failed[0].error.kind == "timeout" and not failed[0].will_retry
    when.then_state(status="failed")


def test_a_deadline_after_the_decision_and_a_decision_after_the_deadline() -> None:
    wf = workflow(task("build"), gate("build", on_timeout="approve", timeout_ms=HOUR_MS))
    given(start(wf), complete("build"), resolve("reject")).when(fire_deadline()).then_nothing()
    late = given(start(wf), complete("build"), fire_deadline()).when(resolve("reject"))
    late.then_rejected("already_resolved")
    assert "by timeout" in late.result.message  # type: ignore[union-attr]


def test_resume_publishes_the_notice_again_and_rearms_the_deadline() -> None:
    wf = workflow(task("build"), gate("build", timeout_ms=HOUR_MS))
    waiting = given(start(wf), complete("build")).state
    kinds = sorted(type(e).__name__ for e in resume(waiting))
    assert kinds == ["ArmTimer", "PublishNotice"]
    done = given(start(wf), complete("build"), resolve("approve")).state
    assert resume(done) == ()


def test_cancelling_the_run_cancels_the_deadline_of_a_pending_approval() -> None:
    from tests.kernel_dsl import cancel

    wf = workflow(task("build"), gate("build", timeout_ms=HOUR_MS))
    when = given(start(wf), complete("build")).when(cancel("stop"))
    assert CancelTimer(run_id=RUN_ID, timer_id=approvals.timer_id("gate", 1)) in when.effects
    assert approvals.pending(when.state) == ()


# -- properties ----------------------------------------------------------------------------

ACTIONS = st.lists(
    st.sampled_from(["complete_build", "approve", "reject", "deadline", "complete_ship"]),
    max_size=8,
)


def _command(action: str, at_ms: int) -> object:
    match action:
        case "complete_build":
            return msgspec.structs.replace(complete("build", 1), at_ms=at_ms)
        case "complete_ship":
            return msgspec.structs.replace(complete("ship", 2), at_ms=at_ms)
        case "deadline":
            return fire_deadline(at_ms=at_ms)
        case _:
            return resolve(action, at_ms=at_ms)


@settings(max_examples=150, deadline=None)
@hypothesis_given(ACTIONS, st.sampled_from(["approve", "reject", "fail"]))
def test_approval_runs_keep_the_kernel_properties(actions: list[str], on_timeout: str) -> None:
    """Replay equals incremental, the fold splits anywhere, a handled command decided again
    yields nothing new (or a Rejection), terminal is absorbing, at most one resolution."""
    wf: WorkflowDef = workflow(
        task("build"),
        gate("build", on_timeout=on_timeout, timeout_ms=HOUR_MS),
        task("ship", "gate"),
    )
    state = fold(())
    events: list[AnyEvent] = []
    first = decide(state, msgspec.structs.replace(start(wf), at_ms=1))
    assert isinstance(first, tuple)
    for event in first:
        state = fold_from(state, (event,))
    events.extend(first)
    for index, action in enumerate(actions):
        command = _command(action, 10 + index)
        decided = decide(state, command)  # type: ignore[arg-type]
        if not isinstance(decided, tuple):
            continue
        state = fold_from(state, decided)
        events.extend(decided)
        again = decide(state, command)  # type: ignore[arg-type]
        assert not isinstance(again, tuple) or again == (), f"{action} decided twice: {again}"
    assert fold(events) == state
    for cut in range(len(events) + 1):
        assert fold_from(fold(events[:cut]), events[cut:]) == state
    assert sum(isinstance(e, ApprovalResolved) for e in events) <= 1
    if is_terminal(state):
        assert not isinstance(decide(state, resolve("approve", at_ms=99)), tuple)


def test_the_query_tables_hold_one_row_per_approval_with_its_outcome() -> None:
    from projections.sqlite import approval_rows

    wf = workflow(task("build"), gate("build", timeout_ms=HOUR_MS))
    asked = given(start(wf), complete("build"))
    (row,) = approval_rows(asked.state, 7)
    assert row[:3] == (RUN_ID, "gate", "Ship it?") and row[5:] == (None, None, None, 7)
    decided = given(start(wf), complete("build"), resolve("reject", by="bo"))
    (row,) = approval_rows(decided.state, 9)
    assert row[5:] == (decided.last_at_ms, "rejected", "bo", 9)


def test_a_decision_for_a_step_of_a_type_that_takes_no_approvals_is_rejected() -> None:
    """Refused by the step-type base (every type, not only the Python client's check), naming
    the step's type: a type that ignored it left the caller waiting for a record."""
    for step in (step_of("hold", "wait_signal", {"signal": "go"}, "build"),
                 step_of("hold", "sleep", {"duration": "1h"}, "build")):  # fmt: skip
        running = given(start(workflow(task("build"), step))).when(complete("build", 1))
        rejected = decide(running.state, resolve("approve", step_id="hold"))
        assert isinstance(rejected, Rejection) and rejected.code == "unknown_step", rejected
        assert f"is a {step.type} step" in rejected.message, rejected.message
