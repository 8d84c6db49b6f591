"""Given/when/then examples of lost attempts: an attempt whose worker vanished (a worker's
`FailTask(kind="lost")`, or `heartbeat_timeout` from an older worker) is recorded as lost and
runs again at once, without consuming the retry policy, up to `limits.lost_attempts_max`.
The same rule for steps, map items, agent turns and agent tool calls."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from kernel import limits
from kernel.commands import FailureKind
from kernel.effects import ArmTimer, CancelTimer, EnqueueTask
from kernel.events import (
    AgentToolCompleted,
    AgentToolLost,
    AgentToolScheduled,
    AgentTurnLost,
    AgentTurnScheduled,
    ErrorInfo,
    MapItemFailed,
    MapItemLost,
    MapItemScheduled,
    RunCompleted,
    RunFailed,
    StepFailed,
    StepLost,
    StepRetryScheduled,
    StepScheduled,
)
from kernel.timers import step_timeout_timer_id
from kernel.workflow import RetryPolicy, StepDef, WorkflowDef
from tests.kernel_dsl import (
    Item,
    complete,
    fail,
    fire_retry,
    given,
    raw,
    retry,
    start,
    started,
    task,
    workflow,
)

LOST = ErrorInfo(message="worker lost", kind="lost")


def lost(step_id: str, attempt: int = 1, kind: FailureKind = "lost") -> Any:
    return fail(step_id, "worker lost", attempt=attempt, kind=kind)


def lost_times(step_id: str, count: int) -> tuple[Item, ...]:
    """`count` lost attempts in a row of `step_id` (attempts 1..count)."""
    return tuple(lost(step_id, attempt) for attempt in range(1, count + 1))


# --- steps --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lost", "heartbeat_timeout"])
def test_a_lost_attempt_of_a_step_without_a_retry_policy_runs_again_at_once(
    kind: FailureKind,
) -> None:
    wf = workflow(task("a"), task("b", "a"))
    when = given(start(wf, {"x": 1}), started("a")).when(lost("a", kind=kind))
    at = when.at_ms
    when.then(
        StepLost(step_id="a", attempt=1, error=LOST, at_ms=at),
        StepScheduled(step_id="a", attempt=2, input=raw({"x": 1}), at_ms=at),
    ).then_lacks(StepFailed).then_lacks(StepRetryScheduled).then_state(
        status="running", steps={"a": "scheduled", "b": "pending"}
    )
    tasks = [e for e in when.effects if isinstance(e, EnqueueTask)]
    assert [(t.step_id, t.attempt) for t in tasks] == [("a", 2)]
    assert not [e for e in when.effects if isinstance(e, ArmTimer)], "no backoff timer"
    assert when.state.steps[0].lost_attempts == 1
    done = given(
        start(wf, {"x": 1}), started("a"), lost("a", kind=kind), complete("a", 5, attempt=2)
    )
    end = done.when(complete("b", 6))
    end.then_includes(RunCompleted(output=raw(6), at_ms=end.at_ms))


def test_lost_attempts_do_not_consume_max_attempts() -> None:
    wf = workflow(task("a", retry=retry(2)))
    history = (start(wf), lost("a"), lost("a", 2))  # attempt 3 is live; no failure counted yet
    first = given(*history).when(fail("a", "flaky", attempt=3))
    first.then_includes(
        StepRetryScheduled(
            step_id="a", attempt=4, delay_ms=1000, due_at_ms=first.at_ms + 1000, at_ms=first.at_ms
        )
    )
    second = given(*history, fail("a", "flaky", attempt=3), fire_retry("a", 4))
    last = second.when(fail("a", "again", attempt=4))
    error = ErrorInfo(message="again")
    last.then(
        StepFailed(step_id="a", attempt=4, error=error, will_retry=False, at_ms=last.at_ms),
        RunFailed(error=error, failed_step_id="a", at_ms=last.at_ms),
    )


def test_a_step_that_loses_more_than_lost_attempts_max_attempts_fails_for_good() -> None:
    wf = workflow(task("a", retry=retry(3)))
    bound = limits.lost_attempts_max
    at_bound = given(start(wf), *lost_times("a", bound))
    assert at_bound.state.steps[0].attempt == bound + 1
    assert at_bound.state.steps[0].lost_attempts == bound
    when = at_bound.when(lost("a", bound + 1))
    failed = [e for e in when.events if isinstance(e, StepFailed)]
    assert [(e.attempt, e.will_retry, e.error.kind) for e in failed] == [(bound + 1, False, "lost")]
    assert "lost_attempts_max" in failed[0].error.message
    when.then_lacks(StepLost).then_lacks(StepRetryScheduled).then_state(status="failed")


def test_a_stale_or_repeated_lost_report_decides_nothing() -> None:
    wf = workflow(task("a"))
    again = given(start(wf), lost("a"))
    again.when(lost("a")).then_nothing()  # attempt 1 was already lost
    again.when(complete("a", "late", attempt=1)).then_nothing()
    again.when(lost("a", 3)).then_nothing()  # not an attempt that exists


def test_a_lost_attempt_cancels_its_deadline_and_the_next_one_has_its_own() -> None:
    wf = workflow(task("a", timeout_ms=5_000))
    when = given(start(wf)).when(lost("a"))
    cancelled = [e.timer_id for e in when.effects if isinstance(e, CancelTimer)]
    armed = [e.timer_id for e in when.effects if isinstance(e, ArmTimer)]
    assert cancelled == [step_timeout_timer_id("a", 1)]
    assert armed == [step_timeout_timer_id("a", 2)]


# --- map items ----------------------------------------------------------------------------


def _fan(retry_policy: RetryPolicy | None = None) -> WorkflowDef:
    step = StepDef(
        id="m", type="map", task="work", depends_on=("a",), config=raw({}), retry=retry_policy
    )
    return workflow(task("a"), step)


def test_a_lost_map_item_runs_again_at_once_without_a_retry_policy() -> None:
    items: tuple[Item, ...] = (start(_fan()), complete("a", [10, 20]))
    when = given(*items).when(lost("m.1"))
    at = when.at_ms
    when.then(
        MapItemLost(step_id="m", index=1, attempt=1, error=LOST, at_ms=at),
        MapItemScheduled(step_id="m", index=1, attempt=2, at_ms=at),
    )
    tasks = [e for e in when.effects if isinstance(e, EnqueueTask)]
    assert [(t.step_id, t.attempt, bytes(t.input)) for t in tasks] == [("m.1", 2, b"20")]
    rest = given(*items, lost("m.1"), complete("m.0", "x"))
    end = rest.when(complete("m.1", "y", attempt=2))
    assert end.state.steps[1].output == raw(["x", "y"]) and end.state.status == "completed"


def test_a_map_item_lost_then_failing_still_has_its_retries() -> None:
    items = (start(_fan(retry(2))), complete("a", [10]), lost("m.0"))
    when = given(*items).when(fail("m.0", "flaky", attempt=2))
    [failed] = [e for e in when.events if isinstance(e, MapItemFailed)]
    assert failed.will_retry and failed.attempt == 2
    bound = limits.lost_attempts_max
    at_bound = given(start(_fan()), complete("a", [10]), *lost_times("m.0", bound))
    over = at_bound.when(lost("m.0", bound + 1))
    over.then_lacks(MapItemLost).then_state(status="failed")
    assert over.state.error is not None and "lost_attempts_max" in over.state.error.message


# --- agent loops --------------------------------------------------------------------------


def _agent(retry_policy: RetryPolicy | None = None) -> WorkflowDef:
    step = StepDef(
        id="a",
        type="agent_loop",
        task="think",
        config=raw({"tools": {"search": "tool.search"}}),
        retry=retry_policy,
    )
    return workflow(step)


def _go_on(*tools: str) -> object:
    calls = [{"name": name, "arguments": index} for index, name in enumerate(tools)]
    return {"agent": "continue", "state": None, "tool_calls": calls}


def test_a_lost_agent_turn_runs_again_at_once_and_keeps_its_retries() -> None:
    when = given(start(_agent(retry(2)))).when(lost("a.turn1"))
    at = when.at_ms
    when.then(
        AgentTurnLost(step_id="a", turn=1, attempt=1, error=LOST, at_ms=at),
        AgentTurnScheduled(step_id="a", turn=1, attempt=2, at_ms=at),
    )
    agent = when.state.dynamic.agents[0]
    assert (agent.turn_attempt, agent.turn_lost_attempts) == (2, 1)
    retried = given(start(_agent(retry(2))), lost("a.turn1")).when(fail("a.turn1", attempt=2))
    assert [e.will_retry for e in retried.events if hasattr(e, "will_retry")] == [True]
    # A new turn counts its own lost attempts.
    next_turn = given(start(_agent()), lost("a.turn1"), complete("a.turn1", _go_on(), attempt=2))
    assert next_turn.state.dynamic.agents[0].turn_lost_attempts == 0


def test_a_lost_tool_call_runs_again_at_once() -> None:
    items = (start(_agent()), complete("a.turn1", _go_on("search")))
    when = given(*items).when(lost("a.turn1-tool0"))
    at = when.at_ms
    when.then(
        AgentToolLost(step_id="a", turn=1, index=0, attempt=1, error=LOST, at_ms=at),
        AgentToolScheduled(
            step_id="a", turn=1, index=0, call_id="call0", name="search", task="tool.search",
            attempt=2, at_ms=at,
        ),
    )  # fmt: skip
    bound = limits.lost_attempts_max
    over = given(*items, *lost_times("a.turn1-tool0", bound)).when(lost("a.turn1-tool0", bound + 1))
    [result] = [e for e in over.events if isinstance(e, AgentToolCompleted)]
    assert not result.ok and result.error is not None and result.error.kind == "lost"
    assert "lost_attempts_max" in result.error.message


def test_lost_attempts_stay_within_the_attempt_number_bound() -> None:
    policy = retry(limits.attempts_max)
    bound = limits.lost_attempts_max
    history: list[Item] = [start(workflow(task("a", retry=policy)))]
    history.extend(lost_times("a", bound))
    attempt = bound + 1
    for _ in range(limits.attempts_max - 1):
        history.extend((fail("a", attempt=attempt), fire_retry("a", attempt + 1)))
        attempt += 1
    state = given(*history).state
    assert state.steps[0].attempt == limits.attempts_per_reopen_max
    last = given(*history).when(fail("a", attempt=attempt))
    last.then_lacks(StepRetryScheduled).then_state(status="failed")
    assert msgspec.structs.asdict(state.steps[0])["lost_attempts"] == bound
