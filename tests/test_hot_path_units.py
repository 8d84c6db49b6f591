"""The engine's per-command helpers that were made cheaper keep their answers: a task
token's refusal names the result and the rule (built only when it refuses); the metrics the
engine's hooks feed count under their labels through the cached children (bounded); a run's
command groups of successive batches run in order, one task each, whatever became of the
earlier one, and other runs' groups do not wait for them.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from dagnats.observe import metrics as metrics_module
from dagnats.observe.hooks import EngineObserver
from dagnats.observe.metrics import Metrics, render
from dagnats.runtime import task_tokens
from dagnats.runtime.command_pump import CommandWindow
from dagnats.runtime.engine import Engine
from dagnats.runtime.task_tokens import TaskTokens
from kernel.commands import CancelRun, CompleteTask, FailTask, TaskStarted
from kernel.effects import task_msg_id
from tests.nats_fixtures import wait_for

TOKENS = TaskTokens("an engine secret")
WAIT_S = 10.0
names = st.text(alphabet="abcdefghij-_0123456789", min_size=1, max_size=12)


def result(kind: str, run_id: str, step_id: str, attempt: int) -> TaskStarted | CompleteTask:
    if kind == "started":
        return TaskStarted(run_id=run_id, at_ms=1, step_id=step_id, attempt=attempt)
    return CompleteTask(run_id=run_id, at_ms=1, step_id=step_id, attempt=attempt)


seeds = st.integers(0, 2**63 - 1)


@given(st.sampled_from(["started", "complete"]), names, names, st.integers(1, 50), seeds)
def test_a_result_with_its_own_token_is_accepted(
    kind: str, run_id: str, step_id: str, attempt: int, seed: int
) -> None:
    """The token is signed over the task's message id (life tag included) and checked
    against the result's attempt key: the same token."""
    command = result(kind, run_id, step_id, attempt)
    token = TOKENS.sign(task_msg_id(run_id, step_id, attempt, seed))
    assert TOKENS.refusal(command, token) is None


@given(names, names, st.integers(1, 50))
def test_a_refusal_names_the_result_and_the_rule(run_id: str, step_id: str, attempt: int) -> None:
    command = result("complete", run_id, step_id, attempt)
    where = f"CompleteTask for run {run_id!r} step {step_id!r} attempt {attempt}"
    missing = TOKENS.refusal(command, None)
    assert missing == f"{where} carries no task token: only its task's worker may report it"
    other = TOKENS.sign(task_msg_id(run_id, step_id, attempt + 1, 7))
    wrong = TOKENS.refusal(command, other)
    assert wrong == f"{where} carries another task's token: only its worker may report it"


def test_attempt_zero_and_non_results() -> None:
    failed = FailTask(run_id="r", at_ms=1, step_id="s", attempt=0, error="e")
    assert (
        TOKENS.refusal(failed, "x")
        == "FailTask for run 'r' step 's' attempt 0: attempts start at 1"
    )
    assert TOKENS.refusal(CancelRun(run_id="r", at_ms=1), None) is None  # not a result


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    families = text_string_to_metric_families(render(metrics).decode())
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in families
        for sample in family.samples
    }


def test_the_hooks_metrics_count_under_their_labels() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.decided("applied", 0.001)
        metrics.attempt_ended("email", "completed", 0.2)
    metrics.decided("rejected", 0.002)
    metrics.attempt_ended("email", "failed", 0.1)
    metrics.attempt_ended("sms", "completed", 0.1)
    metrics.run_started("order")
    metrics.run_finished("order", "completed")
    got = samples(metrics)
    decided = "dagnats_engine_decision_seconds_count"
    assert got[(decided, frozenset({("outcome", "applied")}))] == 3
    assert got[(decided, frozenset({("outcome", "rejected")}))] == 1
    attempts = "dagnats_step_attempts_total"
    assert got[(attempts, frozenset({("task", "email"), ("outcome", "completed")}))] == 3
    assert got[(attempts, frozenset({("task", "email"), ("outcome", "failed")}))] == 1
    assert got[(attempts, frozenset({("task", "sms"), ("outcome", "completed")}))] == 1
    assert got[("dagnats_step_duration_seconds_count", frozenset({("task", "email")}))] == 4
    assert got[("dagnats_runs_started_total", frozenset({("workflow", "order")}))] == 1
    finished = frozenset({("workflow", "order"), ("status", "completed")})
    assert got[("dagnats_runs_finished_total", finished)] == 1


def test_past_the_cache_bound_metrics_still_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module, "metric_children_cached_max", 2)
    metrics = Metrics()
    for task in ("a", "b", "c", "d"):
        metrics.attempt_ended(task, "completed", 0.1)
        metrics.attempt_ended(task, "completed", 0.1)
    assert len(metrics._children) == 2
    got = samples(metrics)
    for task in ("a", "b", "c", "d"):
        labels = frozenset({("task", task), ("outcome", "completed")})
        assert got[("dagnats_step_attempts_total", labels)] == 2


class Held:
    """A fetched command message as `_schedule_batch` sees it (its subject names its run)."""

    def __init__(self, run: str, name: str) -> None:
        self.subject = f"dagnats.cmd.0.{run}.worker"
        self.name = name


def scheduler() -> tuple[Engine, list[str], dict[str, asyncio.Event]]:
    """An engine whose group handler logs each group's start and end, holds the groups
    whose first command names a gate until it is set, and fails those named "boom"."""
    engine = Engine.__new__(Engine)  # (only the scheduling: no history, no queues)
    engine._tails, engine._unsettled = {}, CommandWindow()
    log: list[str] = []
    gates: dict[str, asyncio.Event] = {}

    async def handle_group(group: list[Held]) -> None:
        names = ",".join(message.name for message in group)
        log.append(f"start {names}")
        if group[0].name in gates:
            await gates[group[0].name].wait()
        log.append(f"end {names}")
        engine._unsettled.difference_update(group)
        if group[0].name == "boom":
            raise RuntimeError("the transport failed")

    engine._handle_group = handle_group  # type: ignore[method-assign,assignment]
    return engine, log, gates


async def test_a_runs_later_batch_waits_for_its_earlier_one_and_others_do_not() -> None:
    engine, log, gates = scheduler()
    gates["a1"] = asyncio.Event()
    first = engine._schedule_batch([Held("ra", "a1"), Held("rb", "b1")])  # type: ignore[list-item]
    second = engine._schedule_batch([Held("ra", "a2"), Held("rc", "c1")])  # type: ignore[list-item]
    await wait_for(lambda: "end c1" in log, timeout_ms=int(WAIT_S * 1000), what="c1 to end")
    assert "start a2" not in log, log  # run ra's second group waits for its first
    gates["a1"].set()
    await asyncio.wait_for(asyncio.gather(first, second), WAIT_S)
    assert log.index("end a1") < log.index("start a2"), log
    assert engine._tails == {} and engine._unsettled == set()


async def test_a_failed_group_does_not_stop_its_runs_next_group() -> None:
    engine, log, _ = scheduler()
    first = engine._schedule_batch([Held("ra", "boom")])  # type: ignore[list-item]
    second = engine._schedule_batch([Held("ra", "a2")])  # type: ignore[list-item]
    results = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), WAIT_S)
    assert isinstance(results[0], RuntimeError) and results[1] is None, results
    assert log == ["start boom", "end boom", "start a2", "end a2"]
    assert engine._tails == {}


def test_a_decision_feeds_its_latency_under_its_outcome_and_error_when_it_raised() -> None:
    metrics = Metrics()
    observer = EngineObserver(metrics=metrics)
    command = CancelRun(run_id="r", at_ms=1)
    with observer.decision(command) as seen:
        seen.outcome = "applied"
    with pytest.raises(RuntimeError), observer.decision(command) as seen:
        raise RuntimeError("the transport failed")
    got = samples(metrics)
    decided = "dagnats_engine_decision_seconds_count"
    assert got[(decided, frozenset({("outcome", "applied")}))] == 1
    assert got[(decided, frozenset({("outcome", "error")}))] == 1
    quiet = EngineObserver()
    if quiet.on:  # (tracing configured from the environment)
        return
    with quiet.decision(command) as seen:  # observing off: a plain outcome holder
        seen.outcome = "ignored"
    assert seen.outcome == "ignored"


@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=60))
def test_a_remembered_token_is_the_one_a_fresh_signer_makes(msg_ids: list[str]) -> None:
    """Tokens are remembered (at most `signed_tokens_remembered_max`); a remembered one, one
    forgotten and one signed again are each the HMAC a signer that remembers nothing makes."""
    tokens = TaskTokens("secret")
    for msg_id in msg_ids + msg_ids[::-1]:
        assert tokens.sign(msg_id) == TaskTokens("secret").sign(msg_id)
        assert tokens.sign(msg_id) != TaskTokens("another secret").sign(msg_id)
    assert len(tokens._signed) <= len(set(msg_ids))


def test_the_signer_remembers_a_bounded_number_of_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task_tokens, "signed_tokens_remembered_max", 3)
    tokens = TaskTokens("secret")
    signed = [tokens.sign(f"run:s{index}:1") for index in range(5)]
    assert list(tokens._signed) == ["run:s2:1", "run:s3:1", "run:s4:1"]
    assert tokens.sign("run:s0:1") == signed[0], "a forgotten token is signed again, the same"
