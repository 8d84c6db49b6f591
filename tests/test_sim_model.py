"""The simulator's reference model (dagnats/sim/model.py): its rules one by one, and against the
kernel on random workflows and reachable runs (two implementations written apart must agree).
"""

from __future__ import annotations

from typing import Final

import msgspec
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dagnats.sim import model
from dagnats.sim.model import ModelRun, compare, lost_attempt, max_backoff_ms, skip_holds
from dagnats.sim.model_check import observe
from kernel.commands import (
    AnyCommand,
    CancelRun,
    CompleteTask,
    FailTask,
    FailureKind,
    FireTimer,
    StartRun,
)
from kernel.workflow import RetryPolicy, SkipIf, WorkflowDef
from kernel.workflow.builder import Retry, Skip, Workflow
from tests.strategies import Driver, Run, _weighted_kind, draw_command, seeds, workflows

RUN: Final = "run-1"


def start(workflow: WorkflowDef) -> ModelRun:
    return ModelRun(StartRun(run_id=RUN, at_ms=0, workflow=workflow), 0)


def done(step: str, attempt: int = 1, output: bytes = b"{}") -> CompleteTask:
    return CompleteTask(
        run_id=RUN, at_ms=0, step_id=step, attempt=attempt, output=msgspec.Raw(output)
    )


def fail(step: str, attempt: int = 1, kind: str = "error") -> FailTask:
    return FailTask(run_id=RUN, at_ms=0, step_id=step, attempt=attempt, error="x", kind=kind)  # type: ignore[arg-type]


def retry(step: str, attempt: int) -> FireTimer:
    return FireTimer(
        run_id=RUN, at_ms=0, timer_id=f"retry.{step}.{attempt}", kind="retry", step_id=step,
        attempt=attempt,
    )  # fmt: skip


def feed(run: ModelRun, *commands: AnyCommand) -> list[bool | None]:
    return [run.feed(command, run.now_ms + 1_000) for command in commands]


def statuses(run: ModelRun) -> dict[str, tuple[str, int]]:
    return {step_id: (step.status, step.attempt) for step_id, step in run.steps.items()}


def test_every_failed_attempt_counts_and_the_last_failure_fails_the_run() -> None:
    workflow = Workflow("w").task("a", task="t", retry=Retry(max_attempts=3)).build()
    run = start(workflow)
    assert feed(run, fail("a"), retry("a", 2), fail("a", 2), retry("a", 3)) == [True] * 4
    assert statuses(run)["a"] == ("live", 3)
    assert feed(run, fail("a", 3)) == [True]
    assert run.status == "failed" and statuses(run)["a"] == ("failed", 3)
    assert feed(run, retry("a", 4), done("a", 3)) == [False, False]  # absorbing


def test_non_retryable_and_invalid_output_fail_for_good_at_once() -> None:
    for kind in ("non_retryable", "invalid_output"):
        workflow = Workflow("w").task("a", task="t", retry=Retry(max_attempts=5)).build()
        run = start(workflow)
        feed(run, fail("a", kind=kind))
        assert run.status == "failed" and statuses(run)["a"] == ("failed", 1), kind


def test_a_stale_result_and_an_early_retry_timer_do_nothing() -> None:
    workflow = Workflow("w").task("a", task="t", retry=Retry(max_attempts=3)).build()
    run = start(workflow)
    assert feed(run, retry("a", 2), fail("a"), done("a", 1), retry("a", 3)) == [
        False, True, False, False,
    ]  # fmt: skip


def test_dependents_start_when_dependencies_are_done_and_skip_if_skips() -> None:
    workflow = (
        Workflow("w")
        .task("a", task="t")
        .task(
            "b",
            task="t",
            depends_on=["a"],
            skip_if=Skip(step_id="a", field="gift", op="==", value=False),
        )
        .task("c", task="t", depends_on=["a", "b"])
        .build()
    )
    run = start(workflow)
    assert statuses(run) == {"a": ("live", 1), "b": ("pending", 0), "c": ("pending", 0)}
    feed(run, done("a", output=b'{"gift": false}'))
    assert statuses(run) == {"a": ("completed", 1), "b": ("skipped", 0), "c": ("live", 1)}
    feed(run, done("c", output=b"7"))
    assert run.status == "completed" and run.output == 7


def test_on_failure_recovers_the_step_and_its_dependents_run() -> None:
    workflow = (
        Workflow("w")
        .task("a", task="t", on_failure="h")
        .task("b", task="t", depends_on=["a"])
        .task("h", task="t")
        .build()
    )
    run = start(workflow)
    feed(run, fail("a", kind="non_retryable"))
    assert statuses(run)["h"] == ("live", 1) and statuses(run)["a"] == ("failed", 1)
    feed(run, done("h", output=b'{"fixed": 1}'))
    assert statuses(run)["a"] == ("recovered", 1) and statuses(run)["b"] == ("live", 1)
    assert run.steps["a"].output == b'{"fixed": 1}'


def test_compensation_runs_latest_completion_first_and_the_run_ends_failed() -> None:
    workflow = (
        Workflow("w")
        .task("a", task="t", compensate="undo_a")
        .task("b", task="t", compensate="undo_b")
        .task("c", task="t", depends_on=["a", "b"])
        .task("undo_a", task="t")
        .task("undo_b", task="t")
        .build()
    )
    run = start(workflow)
    feed(run, done("b"), done("a"), fail("c", kind="non_retryable"))
    assert run.status == "compensating"
    assert statuses(run)["undo_a"] == ("live", 1) and statuses(run)["undo_b"] == ("pending", 0)
    feed(run, done("undo_a"))
    assert statuses(run)["undo_b"] == ("live", 1)
    feed(run, done("undo_b"))
    assert run.status == "failed"


def test_a_compensate_handler_failing_for_good_ends_compensate_failed() -> None:
    workflow = (
        Workflow("w")
        .task("a", task="t", compensate="undo")
        .task("b", task="t", depends_on=["a"])
        .task("undo", task="t")
        .build()
    )
    run = start(workflow)
    feed(run, done("a"), fail("b", kind="non_retryable"), fail("undo", kind="error"))
    assert run.status == "compensate_failed"


def test_the_run_timeout_fails_the_run_and_a_cancel_cancels_it() -> None:
    workflow = Workflow("w", timeout="1m").task("a", task="t").build()
    run = start(workflow)
    timeout = FireTimer(run_id=RUN, at_ms=0, timer_id="run_timeout", kind="run_timeout")
    assert feed(run, timeout) == [True] and run.status == "failed"
    run = start(workflow)
    assert feed(run, CancelRun(run_id=RUN, at_ms=0), CancelRun(run_id=RUN, at_ms=0)) == [
        True, False,
    ]  # fmt: skip
    assert run.status == "cancelled"


def test_a_step_timeout_is_a_retryable_failure_of_the_live_attempt_only() -> None:
    workflow = Workflow("w").task("a", task="t", timeout="5s", retry=Retry(max_attempts=2)).build()
    run = start(workflow)
    fired = FireTimer(
        run_id=RUN, at_ms=0, timer_id="step_timeout.a.1", kind="step_timeout", step_id="a",
        attempt=1,
    )  # fmt: skip
    assert feed(run, fired, fired) == [True, False]
    assert statuses(run)["a"] == ("retry_wait", 1)


def lost(run: ModelRun, step: str) -> tuple[str, int, int]:
    return run.steps[step].status, run.steps[step].attempt, run.steps[step].lost


def reran(run: ModelRun) -> bool:
    """Whether the latest command lost an attempt that runs again at once."""
    return run.lost_now


def test_a_lost_attempt_runs_again_at_once_without_consuming_max_attempts() -> None:
    workflow = Workflow("w").task("a", task="t", retry=Retry(max_attempts=1)).build()
    for kind in ("lost", "heartbeat_timeout"):  # (older workers report heartbeat_timeout)
        run = start(workflow)
        assert feed(run, fail("a", kind=kind)) == [True] and reran(run), kind
        assert lost(run, "a") == ("live", 2, 1) and run.steps["a"].started_at_ms == run.now_ms
        assert feed(run, done("a", 2, b"5")) == [True] and not reran(run)
        assert (
            run.status == "completed" and run.output == 5 and lost(run, "a") == ("completed", 2, 1)
        )


def test_the_policy_and_its_backoff_count_only_attempts_that_were_not_lost() -> None:
    policy = Retry(max_attempts=2, initial_delay="1s", multiplier=10.0, jitter=0.0)
    workflow = Workflow("w").task("a", task="t", retry=policy).build()
    run = start(workflow)
    feed(run, fail("a", kind="lost"), fail("a", 2))  # attempt 2 is the first failure
    assert lost(run, "a") == ("retry_wait", 2, 1)
    assert run.steps["a"].retry_due_ms == run.now_ms + 1_001  # backoff of failure 1, not 2
    assert feed(run, retry("a", 3), fail("a", 3, kind="lost"), fail("a", 4)) == [True] * 3
    assert run.status == "failed" and lost(run, "a") == ("failed", 4, 2)  # 2 failures of 2


def test_the_lost_bound_fails_the_step_for_good() -> None:
    workflow = Workflow("w").task("a", task="t", retry=Retry(max_attempts=3)).build()
    run = start(workflow)
    for attempt in range(1, model.LOST_ATTEMPTS_MAX + 1):
        assert feed(run, fail("a", attempt, kind="lost")) == [True] and reran(run)
    last = model.LOST_ATTEMPTS_MAX + 1
    assert lost(run, "a") == ("live", last, model.LOST_ATTEMPTS_MAX)
    assert feed(run, fail("a", last, kind="lost")) == [True] and not reran(run)
    assert run.status == "failed"  # no retry, though the policy has 3 attempts to give
    assert lost(run, "a") == ("failed", last, model.LOST_ATTEMPTS_MAX)


def test_a_step_that_may_not_run_again_fails_for_good_when_lost() -> None:
    workflow = (
        Workflow("w")
        .task("a", task="t", compensate="undo")
        .task("b", task="t", depends_on=["a"])
        .task("c", task="t", depends_on=["a"])
        .task("undo", task="t")
        .build()
    )
    run = start(workflow)
    feed(run, done("a"), fail("c", kind="non_retryable"))
    assert run.status == "compensating" and lost(run, "undo") == ("live", 1, 0)
    assert feed(run, fail("b", kind="lost")) == [True] and not reran(run)
    assert lost(run, "b") == ("failed", 1, 0)  # a body step while the run compensates
    assert feed(run, fail("undo", kind="lost")) == [True] and reran(run)
    assert lost(run, "undo") == ("live", 2, 1)  # a compensate handler while it does
    feed(run, done("undo", 2))
    assert run.status == "failed"


def test_lost_attempt_is_the_one_place_of_the_rule() -> None:
    step = model.ModelStep("a", "body", "", attempt=1)
    assert lost_attempt(step, may_run=False) == "fail" and step.lost == 0
    assert lost_attempt(step, may_run=True) == "rerun_now" and (step.lost, step.failures) == (1, 0)
    step.attempt, step.lost = model.LOST_ATTEMPTS_MAX + 1, model.LOST_ATTEMPTS_MAX
    assert lost_attempt(step, may_run=True) == "fail" and step.lost == model.LOST_ATTEMPTS_MAX


def test_backoff_bounds_and_skip_conditions() -> None:
    policy = RetryPolicy(max_attempts=5, initial_delay_ms=200, max_delay_ms=1_000, jitter=0.1)
    assert [max_backoff_ms(policy, n) for n in (1, 2, 3, 4)] == [221, 441, 881, 1101]
    fixed = RetryPolicy(strategy="fixed", initial_delay_ms=50)
    assert max_backoff_ms(fixed, 9) == 51
    raw = msgspec.Raw
    assert skip_holds(SkipIf(step_id="a", field="n.m", op=">=", value=raw(b"2")), b'{"n":{"m":3}}')
    assert not skip_holds(SkipIf(step_id="a", field="x", op="==", value=raw(b"0")), b'{"x":false}')
    assert not skip_holds(SkipIf(step_id="a", field="x", op="<", value=raw(b"1")), b'{"x":"a"}')
    assert skip_holds(SkipIf(step_id="a", field="x", op="!=", value=raw(b"1")), b"{}") is False


def test_a_difference_reads_as_one_line_per_step() -> None:
    workflow = Workflow("w").task("a", task="t", retry=Retry(max_attempts=3)).build()
    run = start(workflow)
    feed(run, fail("a"))
    observed = model.Observed(status="failed", steps={"a": ("failed", 1, 0, b"null")})
    assert compare(run, observed) == [
        "run status: model running, engine failed",
        "step a: model retry_wait after 1 attempt(s), engine failed after 1 attempt(s)",
    ]
    observed.steps["a"] = ("retry_wait", 1, 1, b"null")
    assert compare(run, observed)[1:] == [
        "step a: model retry_wait after 1 attempt(s) (0 lost), engine retry_wait after 1 "
        "attempt(s) (1 lost)"
    ]


def test_outputs_compare_as_json_values_whatever_their_bytes() -> None:
    """The bytes are compared first (the same bytes: no parse); different bytes are parsed, so
    the same value spelled otherwise is no difference and another value is one."""
    workflow = Workflow("w").task("a", task="t").build()
    run = start(workflow)
    feed(run, done("a", output=b'{"n": 1, "s": "x"}'))
    steps = {"a": ("completed", 1, 0, b'{"n": 1, "s": "x"}')}
    assert compare(run, model.Observed(status=run.status, steps=steps, output=run.output)) == []
    steps["a"] = ("completed", 1, 0, b'{"s":"x","n":1.0}')
    assert compare(run, model.Observed(status=run.status, steps=steps, output=run.output)) == []
    steps["a"] = ("completed", 1, 0, b'{"n": 2, "s": "x"}')
    assert compare(run, model.Observed(status=run.status, steps=steps, output=run.output)) == [
        'step a: output model b\'{"n": 1, "s": "x"}\', engine b\'{"n": 2, "s": "x"}\''
    ]


# -- against the kernel ---------------------------------------------------------------------


LOST_KINDS: Final[tuple[FailureKind, ...]] = ("lost", "heartbeat_timeout")


@st.composite
def kernel_runs(draw: st.DrawFn) -> Run:
    """A random workflow and a reachable run of it, decided by the kernel (tests/strategies.py;
    outputs within the payload limit: the model leaves size limits to the kernel's tests).
    Besides single lost reports, a live step sometimes loses a streak of attempts in a row,
    up to past the lost bound."""
    workflow = draw(workflows())
    driver = Driver(workflow)
    driver.start(at_ms=draw(st.integers(0, 10**12)), seed=draw(seeds), input=b'{"q":1}')
    for _ in range(draw(st.integers(0, 60))):
        kinds = driver.available()
        kind = _weighted_kind(draw, (*kinds, "restart"))
        if kind == "restart":
            driver.restart()
        elif kind == "fail" and draw(st.integers(0, 3)) == 0:
            lose_streak(draw, driver)
        else:
            driver.send(draw_command(draw, driver, kind, oversize=False))
    return Run(workflow=workflow, records=tuple(driver.records))


def lose_streak(draw: st.DrawFn, driver: Driver) -> None:
    """One live step's attempts lost one after another (each the attempt then live)."""
    step_id, _attempt, _status = draw(st.sampled_from(driver.live_attempts()))
    bound = model.LOST_ATTEMPTS_MAX
    for _ in range(draw(st.sampled_from((1, 2, bound - 1, bound, bound + 1)))):
        live = [attempt for step, attempt, _ in driver.live_attempts() if step == step_id]
        if not live:
            return
        at_ms = driver.now + draw(st.integers(0, 1_000))
        kind = draw(st.sampled_from(LOST_KINDS))
        driver.send(
            FailTask(
                run_id=driver.run_id, at_ms=at_ms, step_id=step_id, attempt=live[0],
                error="worker lost", kind=kind,
            )
        )  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kernel_runs())
def test_the_model_and_the_kernel_agree_on_every_reachable_run(drawn: Run) -> None:
    """Fed the commands the kernel decided events on, the model finds something to do for
    each (a task's started report aside) and ends where the kernel's fold ends."""
    first = drawn.records[0].command
    assert isinstance(first, StartRun)
    run = ModelRun(first, 0)
    now = 0
    for index, record in enumerate(drawn.records[1:], start=1):
        if not record.events:
            continue  # nothing appended: the engine's history never shows it
        now = max(now, record.command.at_ms)
        applied = run.feed(record.command, now)
        assert applied is not False, (index, record.command, [type(e) for e in record.events])
        assert not compare(run, observe(record.after)), (index, compare(run, observe(record.after)))
    assert not compare(run, observe(drawn.final))
    most = max((step.lost for step in run.steps.values()), default=0)
    reached = {0: "no attempt", model.LOST_ATTEMPTS_MAX: "attempts up to its bound"}
    event(f"a step lost {reached.get(most, 'some attempts')}")  # (--hypothesis-show-statistics)


def test_the_model_imports_formats_only() -> None:
    """Written apart from the kernel: the model reads the workflow and command formats and a
    named limit, never a rule (decide, lifecycle, reducer, queries, react, steps)."""
    import ast
    from pathlib import Path

    allowed = {"kernel.commands", "kernel.workflow", "kernel", "__future__", "json"}
    allowed |= {"dataclasses", "typing"}
    tree = ast.parse(Path(model.__file__).read_text(encoding="utf-8"))
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported <= allowed, imported - allowed
