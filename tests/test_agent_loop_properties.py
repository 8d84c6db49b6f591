"""Hypothesis: the kernel properties hold for runs with an `agent_loop` step.

Runs are driven through `decide` only (tests/strategies.py `Driver`): turns answer with drawn
Continue/Done results and usage, tool calls complete or fail, armed timers fire (retries, the
loop delay, max_duration, timeouts), old commands come again, the engine restarts. Checked on
every run: replay equals incremental, the fold splits anywhere, the codec round-trips state,
re-deciding a handled command yields nothing, terminal is absorbing, and every counter stays
within its bound (turns within max_turns, tool calls within their caps, no turn scheduled once
a budget is spent, attempts within the retry policy).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel import limits
from kernel.commands import (
    AnyCommand,
    CancelRun,
    CompleteTask,
    FailTask,
    FailureKind,
    Rejection,
    ResolveApproval,
)
from kernel.decide import decide
from kernel.events import AgentTurnScheduled
from kernel.reducer import fold, fold_from
from kernel.state import RunState, is_terminal
from kernel.workflow import RetryPolicy, StepDef, WorkflowDef
from steps.agent_parts import agent_of, tool_item_id, turn_item_id
from tests.strategies import RUN_ID, Driver, Run

TOOLS = {"search": "tool.search", "calc": "tool.calc"}


@st.composite
def agent_workflows(draw: st.DrawFn) -> WorkflowDef:
    config: dict[str, Any] = {
        "tools": TOOLS,
        "max_turns": draw(st.integers(1, 5)),
        "on_limit": draw(st.sampled_from(("fail", "complete", "continue_as_new"))),
    }
    if draw(st.booleans()):
        config["max_tokens"] = draw(st.integers(1, 200))
    if draw(st.booleans()):
        config["max_cost"] = draw(st.sampled_from((0.5, 1.0, 3.0)))
    if draw(st.booleans()):
        config["loop_delay"] = "1s"
    if draw(st.booleans()):
        config["max_duration"] = "20s"
    if draw(st.integers(0, 3)) == 0:
        config["continue_as_new_after_turns"] = draw(st.integers(1, 3))
    if draw(st.booleans()):
        config["approval_tools"] = ["search"]
        if draw(st.booleans()):
            config["approval_timeout"] = "5s"
    policy = draw(
        st.none()
        | st.builds(RetryPolicy, max_attempts=st.integers(1, 3), initial_delay_ms=st.just(100))
    )
    step = StepDef(
        id="a",
        type="agent_loop",
        task="think",
        config=msgspec.Raw(msgspec.json.encode(config)),
        retry=policy,
        timeout_ms=draw(st.none() | st.just(5_000)),
    )
    return WorkflowDef(name="agent", steps=(step, StepDef(id="b", task="b", depends_on=("a",))))


def live_items(state: RunState) -> list[tuple[str, int, bool]]:
    """(task id, attempt, is a turn) of every turn or tool call out to a worker."""
    agent = agent_of(state, "a")
    if agent is None:
        return []
    items: list[tuple[str, int, bool]] = []
    if agent.phase == "turn":
        items.append((turn_item_id("a", agent.turn), agent.turn_attempt, True))
    for index, tool in enumerate(agent.tools):
        if agent.phase == "tools" and tool.status == "scheduled":
            items.append((tool_item_id("a", agent.turn, index), tool.attempt, False))
    step_b = state.step("b")
    if step_b is not None and step_b.status in ("scheduled", "running"):
        items.append(("b", step_b.attempt, False))
    return items


def pending_approvals(state: RunState) -> list[str]:
    return [a.key for a in state.approvals if not a.decision]


def turn_output(draw: st.DrawFn) -> bytes:
    usage = {
        "tokens_in": draw(st.integers(0, 60)),
        "tokens_out": draw(st.integers(0, 60)),
        "cost": draw(st.sampled_from((0.0, 0.25, 1.0))),
    }
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return msgspec.json.encode({"agent": "done", "output": {"answer": 1}, **usage})
    if kind == 1:
        return b'{"not": "a turn"}'
    names = draw(st.lists(st.sampled_from(("search", "calc", "unknown")), max_size=3))
    calls = [{"name": name, "arguments": index} for index, name in enumerate(names)]
    return msgspec.json.encode(
        {"agent": "continue", "state": {"k": draw(st.integers(0, 3))}, "tool_calls": calls, **usage}
    )


@st.composite
def agent_runs(draw: st.DrawFn) -> Run:
    workflow = draw(agent_workflows())
    driver = Driver(workflow)
    driver.start(
        at_ms=draw(st.integers(0, 10**6)), seed=draw(st.integers(0, 2**32)), input=b'{"goal":1}'
    )
    after_terminal = draw(st.integers(0, 3))
    sent: list[AnyCommand] = []
    for _ in range(60):
        if is_terminal(driver.state):
            if after_terminal == 0:
                break
            after_terminal -= 1
        at = driver.now + draw(st.integers(0, 3_000))
        items = live_items(driver.state)
        action = draw(st.integers(0, 9))
        command: AnyCommand | None = None
        if action <= 4 and items:
            step_id, attempt, is_turn = draw(st.sampled_from(items))
            output = turn_output(draw) if is_turn else msgspec.json.encode(draw(st.integers()))
            command = CompleteTask(
                run_id=RUN_ID,
                at_ms=at,
                step_id=step_id,
                attempt=attempt,
                output=msgspec.Raw(output),
            )
        elif action <= 6 and items:
            step_id, attempt, _ = draw(st.sampled_from(items))
            kind: FailureKind = draw(
                st.sampled_from(("error", "non_retryable", "heartbeat_timeout", "lost"))
            )
            command = FailTask(
                run_id=RUN_ID,
                at_ms=at,
                step_id=step_id,
                attempt=attempt,
                error="boom",
                kind=kind,
                seed=draw(st.integers(0, 99)),
            )
        elif action == 7 and driver.armed:
            timer = driver.armed[draw(st.sampled_from(sorted(driver.armed)))]
            command = msgspec.structs.replace(timer, at_ms=max(at, timer.at_ms))
        elif action == 8 and pending_approvals(driver.state) and draw(st.booleans()):
            key = draw(st.sampled_from(pending_approvals(driver.state)))
            decision: Literal["approve", "reject"] = draw(st.sampled_from(("approve", "reject")))
            command = ResolveApproval(
                run_id=RUN_ID, at_ms=at, step_id="a", key=key, decision=decision, by="ana"
            )
        elif action == 8 and sent:
            command = msgspec.structs.replace(draw(st.sampled_from(sent)), at_ms=at)
        elif draw(st.integers(0, 5)) == 0:
            command = CancelRun(run_id=RUN_ID, at_ms=at, reason="stop")
        else:
            driver.restart()
        if command is not None:
            sent.append(command)
            driver.send(command)
    return Run(workflow=workflow, records=tuple(driver.records))


def _check_counters(state: RunState, config: dict[str, Any], policy: RetryPolicy) -> None:
    agent = agent_of(state, "a")
    if agent is None:
        return
    assert agent.turns_completed <= config["max_turns"] <= limits.agent_turns_max
    assert agent.turn <= config["max_turns"]
    assert agent.turns_completed <= config.get(
        "continue_as_new_after_turns", limits.agent_turns_max
    )
    assert agent.turns_completed in (agent.turn, agent.turn - 1)
    assert len(agent.tools) <= limits.agent_tool_calls_per_turn_max
    assert agent.tool_calls <= limits.agent_tool_calls_max
    # Lost attempts (their worker vanished) are not failures: they come on top of the policy.
    assert agent.turn_attempt <= policy.max_attempts + agent.turn_lost_attempts
    assert all(tool.attempt <= policy.max_attempts + tool.lost_attempts for tool in agent.tools)


def _check_budgets(run: Run, config: dict[str, Any]) -> None:
    """No turn is scheduled once a budget is spent (a turn may pass it; none comes after)."""
    for record in run.records:
        agent = agent_of(record.before, "a")
        if agent is None:
            continue
        scheduled = [e for e in record.events if isinstance(e, AgentTurnScheduled)]
        new_turns = [e for e in scheduled if e.turn > agent.turn]
        if not new_turns:
            continue
        tokens = agent.tokens_in + agent.tokens_out
        assert tokens < config.get("max_tokens", limits.agent_tokens_max + 1), record.command
        assert agent.cost < config.get("max_cost", limits.agent_cost_max + 1), record.command


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(agent_runs())
def test_kernel_properties_hold_with_an_agent_loop(run: Run) -> None:
    events = run.events
    final = run.final
    assert fold(events) == final  # replay equals incremental
    for split in (1, len(events) // 3, len(events) // 2, len(events) - 1):
        assert fold_from(fold(events[:split]), events[split:]) == final
    assert msgspec.json.decode(msgspec.json.encode(final), type=RunState) == final
    step = run.workflow.steps[0]
    config = msgspec.json.decode(bytes(step.config))
    policy = step.retry or RetryPolicy()
    terminal_seen = False
    for record in run.records:
        if terminal_seen:
            assert not record.events, f"{record.command} after the end decided {record.events}"
        if record.events:
            again = decide(record.after, record.command)
            assert isinstance(again, Rejection) or again == (), (record.command, again)
        _check_counters(record.after, config, policy)
        terminal_seen = terminal_seen or is_terminal(record.after)
    _check_budgets(run, config)
