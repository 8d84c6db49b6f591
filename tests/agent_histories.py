"""Agent loop histories for the codec and property tests: every agent event type, reachable."""

from __future__ import annotations

from typing import Any

from kernel.commands import AnyCommand, FireTimer
from kernel.events import AnyEvent
from kernel.workflow import StepDef
from steps.agent_parts import delay_timer_id
from tests.kernel_dsl import complete, fail, given, raw, retry, start, task, workflow

History = tuple[tuple[AnyCommand | None, tuple[AnyEvent, ...]], ...]


def continue_with(state: object, *tools: str, tokens: int = 1, cost: float = 0.25) -> Any:
    calls = [{"name": name, "arguments": {"n": index}} for index, name in enumerate(tools)]
    return {
        "agent": "continue",
        "state": state,
        "tool_calls": calls,
        "tokens_in": tokens,
        "tokens_out": tokens,
        "cost": cost,
    }


def agent_history() -> History:
    """Turns with tool calls (one retried, one failing for good), a turn retried, the loop
    delay, and a limit: every agent event and the timer events the loop uses."""
    config = {
        "tools": {"search": "tool.search"},
        "max_turns": 3,
        "loop_delay": "1s",
        "on_limit": "complete",
    }
    step = StepDef(id="a", type="agent_loop", task="think", config=raw(config), retry=retry(2))
    delay = FireTimer(
        run_id="r1",
        at_ms=-1,
        timer_id=delay_timer_id("a", 1, 2),
        kind="step",
        step_id="a",
        attempt=1,
    )
    retry_turn = FireTimer(
        run_id="r1",
        at_ms=-1,
        timer_id="retry.a.turn2.2",
        kind="retry",
        step_id="a.turn2",
        attempt=2,
    )
    return given(
        start(workflow(step, task("after", "a")), {"goal": 1}),
        complete("a.turn1", continue_with({"k": 1}, "search", "search")),
        fail("a.turn1-tool0", "flaky"),
        fail("a.turn1-tool1", "bad", kind="non_retryable"),
        FireTimer(
            run_id="r1",
            at_ms=-1,
            timer_id="retry.a.turn1-tool0.2",
            kind="retry",
            step_id="a.turn1-tool0",
            attempt=2,
        ),
        complete("a.turn1-tool0", {"hits": 2}, attempt=2),
        delay,
        fail("a.turn2", "model busy"),
        retry_turn,
        complete("a.turn2", continue_with({"k": 2}), attempt=2),
        FireTimer(
            run_id="r1",
            at_ms=-1,
            timer_id=delay_timer_id("a", 1, 3),
            kind="step",
            step_id="a",
            attempt=1,
        ),
        complete("a.turn3", continue_with({"k": 3})),
    ).history


def resumed_agent_history() -> History:
    """A loop resumed in a run continued as new: turn 1 carries the old run's state."""
    step = StepDef(
        id="a", type="agent_loop", task="think", config=raw({"continue_as_new_after_turns": 1})
    )
    carry = {
        "agent_loop_carry": {
            "step_id": "a",
            "input": {"goal": 1},
            "state": {"k": 9},
            "tool_results": [{"id": "c", "name": "t", "ok": True}],
        }
    }
    return given(
        start(workflow(step), carry), complete("a.turn1", continue_with({"k": 10}))
    ).history
