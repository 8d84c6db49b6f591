"""Given/when/then for the `agent_loop` step type: turns, tool calls, limits, the loop delay."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
import pytest

from kernel.commands import FireTimer
from kernel.effects import ArmTimer, CancelTimer, EnqueueTask
from kernel.errors import WorkflowInvalidError
from kernel.events import (
    AgentLimitReached,
    AgentToolCall,
    AgentToolCompleted,
    AgentToolFailed,
    AgentToolScheduled,
    AgentTurnCompleted,
    AgentTurnFailed,
    AgentTurnScheduled,
    ErrorInfo,
    RunCompleted,
    RunContinuedAsNew,
    StepCompleted,
    StepFailed,
    TimerFired,
    TimerStarted,
)
from kernel.react import resume
from kernel.timers import retry_timer_id
from kernel.workflow import RetryPolicy, StepDef, WorkflowDef, parse_workflow
from steps.agent_parts import deadline_timer_id, delay_timer_id
from tests.kernel_dsl import complete, fail, given, raw, retry, start, task, workflow

TOOLS = {"search": "tool.search", "calc": "tool.calc"}


def agent(
    config: dict[str, Any] | None = None,
    *,
    retry_policy: RetryPolicy | None = None,
    timeout_ms: int | None = None,
) -> WorkflowDef:
    step = StepDef(
        id="a",
        type="agent_loop",
        task="think",
        config=raw({"tools": TOOLS, **(config or {})}),
        retry=retry_policy,
        timeout_ms=timeout_ms,
    )
    return workflow(step, task("after", "a"))


def go_on(state: object, *calls: tuple[str, object], usage: int = 0, cost: float = 0.0) -> Any:
    """A turn's result: Continue(state, calls) as the worker encodes it."""
    return {
        "agent": "continue",
        "state": state,
        "tool_calls": [{"name": name, "arguments": args} for name, args in calls],
        "tokens_in": usage,
        "tokens_out": usage,
        "cost": cost,
    }


def done(output: object) -> Any:
    return {"agent": "done", "output": output, "tokens_in": 1, "tokens_out": 2, "cost": 0.5}


def fire(timer: str, attempt: int = 1) -> FireTimer:
    return FireTimer(
        run_id="r1", at_ms=-1, timer_id=timer, kind="step", step_id="a", attempt=attempt
    )


def tasks_of(effects: tuple[Any, ...]) -> list[tuple[str, str, int, Any]]:
    return [
        (e.step_id, e.task, e.attempt, msgspec.json.decode(bytes(e.input)))
        for e in effects
        if isinstance(e, EnqueueTask)
    ]


def test_a_three_turn_loop_with_tools_runs_each_turn_and_call_once_and_completes() -> None:
    wf = agent()
    first = given().when(start(wf, {"goal": "x"}))
    first.then_includes(AgentTurnScheduled(step_id="a", turn=1, attempt=1, at_ms=first.at_ms))
    [turn1] = tasks_of(first.effects)
    assert turn1[:3] == ("a.turn1", "think", 1)
    assert turn1[3]["input"] == {"goal": "x"} and turn1[3]["state"] is None
    assert turn1[3]["tool_results"] == [] and turn1[3]["turn"] == 1

    tools = given(start(wf, {"goal": "x"})).when(
        complete("a.turn1", go_on({"n": 1}, ("search", {"q": "a"}), ("calc", [1, 2]), usage=10))
    )
    at = tools.at_ms
    calls = (
        AgentToolCall(id="call0", name="search", arguments=raw({"q": "a"})),
        AgentToolCall(id="call1", name="calc", arguments=raw([1, 2])),
    )
    tools.then(
        AgentTurnCompleted(
            step_id="a",
            turn=1,
            attempt=1,
            done=False,
            state=raw({"n": 1}),
            tool_calls=calls,
            tokens_in=10,
            tokens_out=10,
            at_ms=at,
        ),
        AgentToolScheduled(
            step_id="a",
            turn=1,
            index=0,
            call_id="call0",
            name="search",
            task="tool.search",
            attempt=1,
            at_ms=at,
        ),
        AgentToolScheduled(
            step_id="a",
            turn=1,
            index=1,
            call_id="call1",
            name="calc",
            task="tool.calc",
            attempt=1,
            at_ms=at,
        ),
    )
    assert tasks_of(tools.effects) == [
        ("a.turn1-tool0", "tool.search", 1, {"q": "a"}),
        ("a.turn1-tool1", "tool.calc", 1, [1, 2]),
    ]
    running = given(
        start(wf, {"goal": "x"}),
        complete("a.turn1", go_on({"n": 1}, ("search", {"q": "a"}), ("calc", [1, 2]), usage=10)),
        complete("a.turn1-tool1", 3),
    )
    turn2 = running.when(complete("a.turn1-tool0", ["hit"]))
    turn2.then_includes(AgentTurnScheduled(step_id="a", turn=2, attempt=1, at_ms=turn2.at_ms))
    [message] = tasks_of(turn2.effects)
    assert message[0] == "a.turn2" and message[3]["state"] == {"n": 1}
    assert message[3]["tool_results"] == [
        {"id": "call0", "name": "search", "ok": True, "output": ["hit"]},
        {"id": "call1", "name": "calc", "ok": True, "output": 3},
    ]
    assert message[3]["usage"] == {
        "turns": 1,
        "tool_calls": 2,
        "tokens_in": 10,
        "tokens_out": 10,
        "cost": 0.0,
    }
    third = given(*running_items(wf), complete("a.turn2", go_on({"n": 2})))
    assert third.state.dynamic.agents[0].turn == 3
    end = third.when(complete("a.turn3", done("answer")))
    end.then_includes(
        StepCompleted(step_id="a", attempt=1, output=raw("answer"), at_ms=end.at_ms)
    ).then_state(steps={"a": "completed", "after": "scheduled"})
    agent_state = end.state.dynamic.agents[0]
    assert (agent_state.turns_completed, agent_state.tool_calls, agent_state.tokens_in) == (
        3,
        2,
        11,
    )


def running_items(wf: WorkflowDef) -> tuple[Any, ...]:
    return (
        start(wf, {"goal": "x"}),
        complete("a.turn1", go_on({"n": 1}, ("search", {"q": "a"}), ("calc", [1, 2]), usage=10)),
        complete("a.turn1-tool1", 3),
        complete("a.turn1-tool0", ["hit"]),
    )


def test_a_tool_failing_for_good_or_unknown_is_a_result_the_next_turn_sees() -> None:
    wf = agent()
    when = given(start(wf), complete("a.turn1", go_on(None, ("search", 1), ("nope", 2)))).when(
        fail("a.turn1-tool0", "down", kind="non_retryable")
    )
    at = when.at_ms
    when.then_includes(
        AgentToolCompleted(
            step_id="a",
            turn=1,
            index=0,
            attempt=1,
            ok=False,
            error=ErrorInfo(message="down", kind="non_retryable"),
            at_ms=at,
        ),
        AgentTurnScheduled(step_id="a", turn=2, attempt=1, at_ms=at),
    )
    [message] = tasks_of(when.effects)
    results = message[3]["tool_results"]
    assert results[0] == {
        "id": "call0",
        "name": "search",
        "ok": False,
        "error": {"message": "down", "kind": "non_retryable"},
    }
    assert results[1]["ok"] is False and "unknown tool 'nope'" in results[1]["error"]["message"]


def test_a_tool_is_retried_under_the_steps_policy_before_its_failure_is_a_value() -> None:
    wf = agent(retry_policy=retry(2))
    items = (start(wf), complete("a.turn1", go_on(None, ("search", 1))))
    failed = given(*items).when(fail("a.turn1-tool0", "flaky"))
    failed.then(
        AgentToolFailed(
            step_id="a",
            turn=1,
            index=0,
            attempt=1,
            error=ErrorInfo(message="flaky"),
            at_ms=failed.at_ms,
            due_at_ms=failed.at_ms + 1_000,
        ),
    )
    timer = retry_timer_id("a.turn1-tool0", 2)
    assert [e.timer_id for e in failed.effects if isinstance(e, ArmTimer)] == [timer]
    retried_timer = next(e for e in failed.effects if isinstance(e, ArmTimer)).command
    retried = given(*items, fail("a.turn1-tool0", "flaky")).when(retried_timer)
    assert tasks_of(retried.effects) == [("a.turn1-tool0", "tool.search", 2, 1)]


def test_a_turn_failing_is_retried_then_fails_the_loop_for_good() -> None:
    wf = agent(retry_policy=retry(2))
    first = given(start(wf)).when(fail("a.turn1", "model down"))
    first.then_includes(
        AgentTurnFailed(
            step_id="a",
            turn=1,
            attempt=1,
            error=ErrorInfo(message="model down"),
            will_retry=True,
            at_ms=first.at_ms,
            due_at_ms=first.at_ms + 1_000,
        )
    )
    timer = next(e for e in first.effects if isinstance(e, ArmTimer)).command
    again = given(start(wf), fail("a.turn1", "model down"), timer)
    assert again.state.dynamic.agents[0].turn_attempt == 2
    last = again.when(fail("a.turn1", "model down", attempt=2))
    failed = [e for e in last.events if isinstance(e, StepFailed)]
    assert [(e.step_id, e.will_retry) for e in failed] == [("a", False)]
    assert "turn 1 failed: model down" in failed[0].error.message


@pytest.mark.parametrize("key", ["max_turns", "max_iterations"])
def test_max_turns_with_on_limit_fail_fails_the_step(key: str) -> None:
    wf = agent({key: 2})
    when = given(start(wf), complete("a.turn1", go_on(1))).when(complete("a.turn2", go_on(2)))
    when.then_includes(
        AgentLimitReached(
            step_id="a",
            limit="max_turns",
            action="fail",
            at_ms=when.at_ms,
            message="the agent loop took 2 turns (max_turns)",
        )
    ).then_lacks(AgentTurnScheduled, turn=3)
    when.then_state(steps={"a": "failed"}, status="failed")


def test_max_turns_with_on_limit_complete_completes_with_the_last_state() -> None:
    wf = agent({"max_turns": 2, "on_limit": "complete"})
    when = given(start(wf), complete("a.turn1", go_on(1))).when(
        complete("a.turn2", go_on({"draft": "v2"}, ("search", 1)))
    )
    when.then_lacks(AgentToolScheduled)
    when.then_includes(
        StepCompleted(step_id="a", attempt=1, output=raw({"draft": "v2"}), at_ms=when.at_ms)
    )


@pytest.mark.parametrize(
    ("config", "limit"),
    [({"max_tokens": 100}, "max_tokens"), ({"max_cost": 1.5}, "max_cost")],
)
def test_token_and_cost_budgets_stop_the_loop(config: dict[str, Any], limit: str) -> None:
    wf = agent(config)
    under = given(start(wf)).when(complete("a.turn1", go_on(1, usage=20, cost=0.5)))
    under.then_lacks(AgentLimitReached)
    over = given(start(wf), complete("a.turn1", go_on(1, usage=20, cost=0.5))).when(
        complete("a.turn2", go_on(2, usage=40, cost=1.0))
    )
    reached = [e for e in over.events if isinstance(e, AgentLimitReached)]
    assert [e.limit for e in reached] == [limit]
    over.then_state(steps={"a": "failed"})


def test_max_duration_is_a_durable_timer_that_stops_the_loop() -> None:
    wf = agent({"max_duration": "1m", "on_limit": "complete"})
    first = given().when(start(wf))
    timers = [e for e in first.effects if isinstance(e, ArmTimer)]
    assert [(t.timer_id, t.fire_at_ms) for t in timers] == [
        (deadline_timer_id("a", 1), first.at_ms + 60_000)
    ]
    fired = given(start(wf), complete("a.turn1", go_on({"s": 1}, ("search", 1)))).when(
        timers[0].command
    )
    fired.then_includes(
        StepCompleted(step_id="a", attempt=1, output=raw({"s": 1}), at_ms=fired.at_ms)
    )
    assert any(isinstance(e, AgentLimitReached) and e.limit == "max_duration" for e in fired.events)
    # The tool call still in flight ends with the loop: its late result does nothing.
    late = given(start(wf), complete("a.turn1", go_on({"s": 1}, ("search", 1))), timers[0].command)
    late.when(complete("a.turn1-tool0", 1)).then_nothing()


def test_loop_delay_is_a_durable_timer_between_turns() -> None:
    wf = agent({"loop_delay": "30s"})
    when = given(start(wf)).when(complete("a.turn1", go_on(1)))
    timer_id = delay_timer_id("a", 1, 2)
    when.then_includes(
        TimerStarted(
            step_id="a", timer_id=timer_id, fire_at_ms=when.at_ms + 30_000, at_ms=when.at_ms
        )
    ).then_lacks(AgentTurnScheduled, turn=2)
    armed = [e for e in when.effects if isinstance(e, ArmTimer)]
    assert [(t.timer_id, t.fire_at_ms) for t in armed] == [(timer_id, when.at_ms + 30_000)]
    waiting = given(start(wf), complete("a.turn1", go_on(1)))
    assert [e.timer_id for e in resume(waiting.state) if isinstance(e, ArmTimer)] == [timer_id]
    woken = waiting.when(fire(timer_id))
    woken.then(
        TimerFired(step_id="a", timer_id=timer_id, at_ms=woken.at_ms),
        AgentTurnScheduled(step_id="a", turn=2, attempt=1, at_ms=woken.at_ms),
    )
    given(start(wf), complete("a.turn1", go_on(1)), fire(timer_id)).when(
        fire(timer_id)
    ).then_nothing()


def test_duplicate_and_stale_results_are_ignored() -> None:
    wf = agent(retry_policy=retry(3))
    items = (start(wf), complete("a.turn1", go_on(1, ("search", 1))))
    running = given(*items)
    running.when(complete("a.turn1", go_on(9))).then_nothing()  # the turn again
    running.when(complete("a.turn1-tool0", 1, attempt=2)).then_nothing()  # no such attempt
    running.when(complete("a.turn1-tool5", 1)).then_nothing()  # no such call
    running.when(complete("a.turn7", go_on(1))).then_nothing()  # no such turn
    running.when(complete("a.other", 1)).then_nothing()  # not a key of the loop
    finished = given(*items, complete("a.turn1-tool0", "r"))
    finished.when(complete("a.turn1-tool0", "r")).then_nothing()  # the tool again
    finished.when(fail("a.turn1-tool0", "late")).then_nothing()
    done_run = given(
        *items, complete("a.turn1-tool0", "r"), complete("a.turn2", done(1)), complete("after", 2)
    )
    assert done_run.state.status == "completed"
    done_run.when(complete("a.turn2", done(1))).then_nothing()


def test_a_result_that_is_not_continue_or_done_fails_the_turn_for_good() -> None:
    when = given(start(agent(retry_policy=retry(3)))).when(complete("a.turn1", {"x": 1}))
    failed = [e for e in when.events if isinstance(e, AgentTurnFailed)]
    assert [(e.error.kind, e.will_retry) for e in failed] == [("invalid_output", False)]
    when.then_state(steps={"a": "failed"})


def test_the_end_of_the_loop_cancels_its_timers() -> None:
    wf = agent({"max_duration": "1h", "max_turns": 1}, timeout_ms=5_000)
    when = given(start(wf)).when(complete("a.turn1", go_on(1, ("search", 1))))
    cancelled = {e.timer_id for e in when.effects if isinstance(e, CancelTimer)}
    assert deadline_timer_id("a", 1) in cancelled
    completed = given(start(wf)).when(complete("a.turn1", done(1)))
    cancelled = {e.timer_id for e in completed.effects if isinstance(e, CancelTimer)}
    assert deadline_timer_id("a", 1) in cancelled
    assert not any(isinstance(e, RunCompleted) for e in completed.events)  # `after` runs next


def test_resume_issues_the_turn_or_the_tools_in_flight_again() -> None:
    wf = agent(retry_policy=retry(2))
    state = given(start(wf)).state
    assert [e.step_id for e in resume(state) if isinstance(e, EnqueueTask)] == ["a.turn1"]
    state = given(
        start(wf),
        complete("a.turn1", go_on(1, ("search", 1), ("calc", 2))),
        complete("a.turn1-tool0", 1),
        fail("a.turn1-tool1", "x"),
    ).state
    effects = resume(state)
    assert [e.step_id for e in effects if isinstance(e, EnqueueTask)] == []
    assert [e.timer_id for e in effects if isinstance(e, ArmTimer)] == [
        retry_timer_id("a.turn1-tool1", 2)
    ]


@pytest.mark.parametrize(
    ("config", "field", "rule"),
    [
        ({"max_turns": 0}, "max_turns", "from 1 to"),
        ({"max_iterations": 10**9}, "max_iterations", "from 1 to"),
        ({"on_limit": "explode"}, "on_limit", "one of"),
        ({"approval_tools": ["zz"], "tools": {"s": "t"}}, "approval_tools[0]", "names no tool"),
        ({"approval_tools": "search"}, "approval_tools", "array of non-empty strings"),
        ({"continue_as_new_after_turns": 0}, "continue_as_new_after_turns", "from 1 to"),
        ({"tools": {"search": 1}}, "tools", "tool name -> worker task"),
        ({"max_cost": -1}, "max_cost", "above 0"),
        ({"loop_delay": "soon"}, "loop_delay", "duration"),
        ({"turns": 3}, "turns", "unknown field"),
    ],
)
def test_bad_agent_loop_definitions_are_named_by_path(
    config: dict[str, Any], field: str, rule: str
) -> None:
    document = {
        "name": "w",
        "steps": [{"id": "a", "type": "agent_loop", "task": "t", "config": config}],
    }
    with pytest.raises(WorkflowInvalidError) as caught:
        parse_workflow(document)
    path = f"steps[0].config.{field}"
    assert any(p.path == path and rule in p.rule for p in caught.value.problems), (
        caught.value.problems
    )
    ok = {
        "name": "w",
        "steps": [
            {
                "id": "a",
                "type": "agent_loop",
                "task": "t",
                "config": {"max_iterations": 3, "tools": {"s": "t"}},
            }
        ],
    }
    assert parse_workflow(ok).steps[0].type == "agent_loop"


def test_on_limit_continue_as_new_runs_the_tools_then_carries_the_loop_into_a_fresh_run() -> None:
    wf = agent({"max_turns": 2, "on_limit": "continue_as_new"})
    items = (
        start(wf, {"goal": "x"}),
        complete("a.turn1", go_on(1)),
        complete("a.turn2", go_on({"s": 2}, ("search", 1))),
    )
    given(*items[:2]).when(items[2]).then_lacks(AgentLimitReached)
    when = given(*items).when(complete("a.turn2-tool0", "r"))
    reached = [e for e in when.events if isinstance(e, AgentLimitReached)]
    assert [(e.limit, e.action) for e in reached] == [("max_turns", "continue_as_new")]
    continued = [e for e in when.events if isinstance(e, RunContinuedAsNew)]
    assert len(continued) == 1 and when.state.status == "continued_as_new"
    carried = msgspec.json.decode(bytes(continued[0].input))
    fresh = given().when(start(wf, carried))
    [message] = tasks_of(fresh.effects)
    assert message[0] == "a.turn1"
    assert message[3]["input"] == {"goal": "x"} and message[3]["state"] == {"s": 2}
    assert message[3]["tool_results"] == [
        {"id": "call0", "name": "search", "ok": True, "output": "r"}
    ]
    fresh.then_state(steps={"a": "scheduled"})
    assert bytes(fresh.state.steps[0].input) == b'{"goal":"x"}'


def test_continue_as_new_after_turns_keeps_each_runs_history_short() -> None:
    wf = agent({"continue_as_new_after_turns": 2})
    when = given(start(wf, 7), complete("a.turn1", go_on(1))).when(complete("a.turn2", go_on(2)))
    reached = [e for e in when.events if isinstance(e, AgentLimitReached)]
    assert [(e.limit, e.action) for e in reached] == [
        ("continue_as_new_after_turns", "continue_as_new")
    ]
    assert when.state.status == "continued_as_new"
    assert not any(isinstance(e, AgentTurnScheduled) and e.turn == 3 for e in when.events)


def test_a_loop_that_continues_as_new_must_be_a_root_step() -> None:
    document = {
        "name": "w",
        "steps": [
            {"id": "p", "task": "p"},
            {
                "id": "a",
                "type": "agent_loop",
                "task": "t",
                "depends_on": ["p"],
                "config": {"on_limit": "continue_as_new"},
            },
        ],
    }
    with pytest.raises(WorkflowInvalidError) as caught:
        parse_workflow(document)
    assert any(
        p.path == "steps[1].depends_on" and "root step" in p.rule for p in caught.value.problems
    )


def resolve(decision: Literal["approve", "reject"], by: str = "ana", comment: str = "") -> Any:
    from kernel.commands import ResolveApproval

    return ResolveApproval(
        run_id="r1",
        at_ms=-1,
        step_id="a",
        key="a.turn1-tool0",
        decision=decision,
        by=by,
        comment=comment,
    )


def test_an_approval_tool_waits_for_a_human_and_a_rejection_is_a_result_the_agent_sees() -> None:
    from kernel.events import ApprovalRequested

    wf = agent({"approval_tools": ["search"], "approval_timeout": "1h"})
    items = (start(wf), complete("a.turn1", go_on(None, ("search", {"q": 1}), ("calc", 2))))
    asked = given(items[0]).when(items[1])
    requests = [e for e in asked.events if isinstance(e, ApprovalRequested)]
    assert [(e.key, e.deadline_ms) for e in requests] == [
        ("a.turn1-tool0", asked.at_ms + 3_600_000)
    ]
    assert "q" not in requests[0].question and "search" in requests[0].question
    asked.then_lacks(AgentToolScheduled, index=0)
    assert [t[0] for t in tasks_of(asked.effects)] == ["a.turn1-tool1"]
    approved = given(*items).when(resolve("approve"))
    assert [t[:3] for t in tasks_of(approved.effects)] == [("a.turn1-tool0", "tool.search", 1)]
    rejected = given(*items, complete("a.turn1-tool1", 4)).when(resolve("reject", comment="no"))
    rejected.then_includes(AgentTurnScheduled(step_id="a", turn=2, attempt=1, at_ms=rejected.at_ms))
    [message] = tasks_of(rejected.effects)
    assert message[3]["tool_results"][0] == {
        "id": "call0",
        "name": "search",
        "ok": False,
        "error": {"message": "tool call 'call0' was rejected by ana: no", "kind": "non_retryable"},
    }
    given(*items, resolve("approve")).when(resolve("reject")).then_rejected("already_resolved")


def test_the_query_tables_hold_each_turn_with_its_usage_and_each_tool_call() -> None:
    from sqlite_utils import Database

    from kernel import codec
    from projections.base import SqliteRunner
    from projections.sqlite import QueryTables

    history = given(
        start(agent(), {"goal": "x"}),
        complete("a.turn1", go_on({"n": 1}, ("search", {"q": "a"}), ("nope", 1), usage=10)),
        complete("a.turn1-tool0", {"hits": 3}),
        complete("a.turn2", done("the end")),
    ).history
    messages = [
        (seq, "r1", codec.encode_decision(command, events))
        for seq, (command, events) in enumerate(
            ((c, e) for c, e in history if c is not None and e), start=1
        )
    ]
    db = Database(memory=True)
    SqliteRunner(db, QueryTables()).apply_all(messages)
    turns = db.execute(
        "SELECT turn, input_tokens, output_tokens, cost_usd, tool_calls FROM agent_turns "
        "ORDER BY turn"
    ).fetchall()
    assert turns == [(1, 10, 10, 0.0, 2), (2, 1, 2, 0.5, 0)]
    calls = db.execute(
        "SELECT call_id, turn, tool, status, error IS NOT NULL FROM tool_calls ORDER BY call_id"
    ).fetchall()
    assert calls == [
        ("turn1-tool0", 1, "search", "completed", 0),
        ("turn1-tool1", 1, "", "failed", 1),
    ]
