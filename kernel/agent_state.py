"""The state of an agent loop (the `agent_loop` step type): its turns, tool calls and usage.

Frozen values only, held in `RunState.dynamic.agents` (one per agent_loop step that started).
A turn is a worker task whose id is `<step>.turn<n>`; a tool call of turn n is a worker task
`<step>.turn<n>-tool<i>`. Neither is a step: the kernel routes their results to the step type
(`kernel.dynamic.route_item`), as it does a map's items.

This module may import only `kernel.events` and msgspec (`kernel.dynamic_state` imports it).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from kernel.events import NULL, ErrorInfo

AgentPhase = Literal[
    "turn",  # turn `turn`, attempt `turn_attempt`, is out to a worker
    "turn_retry",  # attempt `turn_attempt + 1` of turn `turn` waits for its retry timer
    "tools",  # turn `turn` completed; its tool calls run
    "delay",  # turn `turn` and its tools are done; the loop delay runs before the next turn
    "ended",  # done, failed, or stopped at a limit
]
ToolStatus = Literal["pending", "scheduled", "retry_wait", "completed"]


class ToolState(msgspec.Struct, frozen=True, kw_only=True):
    """One tool call of the latest turn; `completed` holds its result, failures included."""

    call_id: str
    name: str
    task: str  # the worker task that runs it ("" for a tool the loop does not know)
    arguments: msgspec.Raw = NULL
    status: ToolStatus = "pending"
    attempt: int = 0
    deadline_ms: int | None = None
    retry_at_ms: int | None = None
    ok: bool = False
    output: msgspec.Raw = NULL
    error: ErrorInfo | None = None


class AgentState(msgspec.Struct, frozen=True, kw_only=True):
    """An agent loop's progress: the turn in hand, the state carried between turns, the tool
    calls of the latest turn, and the usage counters the limits are checked against."""

    step_id: str
    started_at_ms: int
    phase: AgentPhase = "turn"
    turn: int = 1
    turn_attempt: int = 1
    turn_deadline_ms: int | None = None
    turn_retry_at_ms: int | None = None
    delay_until_ms: int | None = None
    state: msgspec.Raw = NULL  # what the latest turn carried over (null before the first)
    tools: tuple[ToolState, ...] = ()
    carried_tool_results: msgspec.Raw = NULL  # turn 1's, from a run continued as new
    turns_completed: int = 0
    tool_calls: int = 0  # over all turns
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0

    @property
    def tools_done(self) -> bool:
        return all(tool.status == "completed" for tool in self.tools)

    def with_tool(self, index: int, tool: ToolState) -> AgentState:
        """This state with tool call `index` of the latest turn replaced."""
        assert 0 <= index < len(self.tools), f"{self.step_id!r} has no tool call {index}"
        tools = (*self.tools[:index], tool, *self.tools[index + 1 :])
        return msgspec.structs.replace(self, tools=tools)
