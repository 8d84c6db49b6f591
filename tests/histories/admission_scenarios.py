"""Golden scenarios of admission, the run's side (kernel/admission_run.py): a run held as
pending then admitted, scheduled then started, and one cancelled while pending (a skipped or
schema-refused start is one decision: tests/test_admission_kernel.py holds those)."""

from __future__ import annotations

from typing import Final

from kernel.commands import (
    AdmissionVerdict,
    AdmitRun,
    AnyCommand,
    DeferTask,
    FireTimer,
    ReleaseTask,
    ScheduleRun,
    StartGated,
)
from kernel.workflow import WorkflowDef
from kernel.workflow.model import Admission, RateLimit, TaskConcurrency
from tests.kernel_dsl import RUN_ID, cancel, complete, signal, start, task, workflow

GATE: Final = "admission-0123456789abcdef01234567"
T0: Final = 1_000


def gated_workflow() -> WorkflowDef:
    base = workflow(task("work"), name="gated")
    return WorkflowDef(name=base.name, steps=base.steps, admission=Admission(max_runs=1))


def gated(outcome: str, *, holder: str = "", reason: str = "") -> StartGated:
    verdict = AdmissionVerdict(
        outcome=outcome,  # type: ignore[arg-type]
        gate_id=GATE, holder_run_id=holder, reason=reason,
    )  # fmt: skip
    begin = start(gated_workflow(), {"customer": "c1"}, at_ms=T0)
    return StartGated(run_id=RUN_ID, at_ms=T0, start=begin, verdict=verdict)


def admitted() -> AdmitRun:
    verdict = AdmissionVerdict(outcome="admitted", gate_id=GATE)
    return AdmitRun(run_id=RUN_ID, at_ms=T0 + 5_000, verdict=verdict)


def scheduled() -> ScheduleRun:
    begin = start(workflow(task("work"), name="later"), {"n": 1}, at_ms=T0)
    return ScheduleRun(run_id=RUN_ID, at_ms=T0, start=begin, run_at_ms=T0 + 60_000)


def limited_start() -> AnyCommand:
    base = workflow(task("work"), name="limited")
    admission = Admission(
        rate_limits=(RateLimit(task="work", limit=1, period_ms=10_000),),
        max_task_concurrency=(TaskConcurrency(task="work", limit=1),),
    )
    limited = WorkflowDef(name=base.name, steps=base.steps, admission=admission)
    return start(limited, {"n": 1}, at_ms=T0)


def deferred(reason: str, until_ms: int | None, at_ms: int) -> DeferTask:
    return DeferTask(
        run_id=RUN_ID, at_ms=at_ms, step_id="work", attempt=1,
        reason=reason, limiter_id=LIMITER, until_ms=until_ms,  # type: ignore[arg-type]
    )  # fmt: skip


LIMITER: Final = "admission-flow-0123456789abcdef01234567"
RELEASE_FIRED: Final = FireTimer(
    run_id=RUN_ID, at_ms=T0 + 10_000, timer_id="release.work.1", kind="task_release",
    step_id="work", attempt=1,
)  # fmt: skip

ADMISSION_SCENARIOS: Final[dict[str, tuple[AnyCommand, ...]]] = {
    "admission_pending_then_admitted": (
        gated("pending"), admitted(), admitted(), complete("work", {"ok": True}),
    ),
    "admission_pending_cancelled": (
        gated("pending"), signal("hello", {"while": "pending"}, signal_id="s1"),
        cancel("not needed"), admitted(),
    ),
    "task_rate_limited_then_slot": (
        limited_start(), deferred("rate_limited", T0 + 10_000, T0), RELEASE_FIRED, RELEASE_FIRED,
        deferred("task_concurrency", None, T0 + 10_000),
        ReleaseTask(run_id=RUN_ID, at_ms=T0 + 12_000, step_id="work", attempt=1),
        complete("work", {"ok": 2}),
    ),
    "scheduled_then_started": (
        scheduled(), AdmitRun(run_id=RUN_ID, at_ms=T0 + 60_000), complete("work", {"ok": 1}),
    ),
}  # fmt: skip
