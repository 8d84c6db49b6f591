"""The input of an agent turn's task: the envelope the worker unpacks into its context. Pure.

`{"input": <the step input>, "state": <what the previous turn carried>, "tool_results": [{"id",
"name", "ok", "output"} or {"id", "name", "ok": false, "error": {"message", "kind"}}], "turn": n,
"usage": {"turns", "tool_calls", "tokens_in", "tokens_out", "cost"}}`, built from history alone,
so a turn's task message is the same however often it is published again.
"""

from __future__ import annotations

import msgspec

from kernel.events import NULL
from kernel.step_states import AgentState


class ToolError(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    kind: str


class ToolResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    id: str
    name: str
    ok: bool
    output: msgspec.Raw = NULL
    error: ToolError | None = None


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    turns: int
    tool_calls: int
    tokens_in: int
    tokens_out: int
    cost: float


class TurnEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    input: msgspec.Raw
    state: msgspec.Raw
    tool_results: msgspec.Raw  # a JSON array of ToolResult
    turn: int
    usage: Usage


class CarriedLoop(msgspec.Struct, frozen=True, kw_only=True):
    """What an agent loop carries into the fresh run it continues as: its step input, the last
    state and the tool results the next turn would have seen."""

    step_id: str
    input: msgspec.Raw
    state: msgspec.Raw = NULL
    tool_results: msgspec.Raw = msgspec.Raw(b"[]")


class Carry(msgspec.Struct, frozen=True, kw_only=True):
    """The input of a run continued from an agent loop: `{"agent_loop_carry": {...}}`."""

    agent_loop_carry: CarriedLoop


_carry_decoder = msgspec.json.Decoder(Carry)


def carry_input(step_id: str, step_input: msgspec.Raw, agent: AgentState) -> msgspec.Raw:
    """The input of the fresh run that `agent` continues as."""
    carried = CarriedLoop(
        step_id=step_id, input=step_input, state=agent.state, tool_results=tool_results(agent)
    )
    return msgspec.Raw(msgspec.json.encode(Carry(agent_loop_carry=carried)))


def read_carry(step_input: msgspec.Raw, step_id: str) -> CarriedLoop | None:
    """What a loop continued as new carried for `step_id`, if its input is such a carry."""
    if not bytes(step_input).startswith(b'{"agent_loop_carry"'):
        return None
    try:
        carried = _carry_decoder.decode(bytes(step_input)).agent_loop_carry
    except msgspec.DecodeError:
        return None
    return carried if carried.step_id == step_id else None


def tool_results(agent: AgentState) -> msgspec.Raw:
    """The latest turn's tool results as the next turn sees them (a JSON array)."""
    if not agent.tools and bytes(agent.carried_tool_results) != b"null":
        return agent.carried_tool_results
    results = tuple(
        ToolResult(
            id=tool.call_id,
            name=tool.name,
            ok=tool.ok,
            output=tool.output if tool.ok else NULL,
            error=None
            if tool.ok or tool.error is None
            else ToolError(message=tool.error.message, kind=tool.error.kind),
        )
        for tool in agent.tools
    )
    return msgspec.Raw(msgspec.json.encode(results))


def turn_envelope(step_input: msgspec.Raw, agent: AgentState, turn: int) -> msgspec.Raw:
    """The task input of `turn`, given the loop's state once the turn before it is done."""
    usage = Usage(
        turns=agent.turns_completed,
        tool_calls=agent.tool_calls,
        tokens_in=agent.tokens_in,
        tokens_out=agent.tokens_out,
        cost=agent.cost,
    )
    envelope = TurnEnvelope(
        input=step_input, state=agent.state, tool_results=tool_results(agent), turn=turn,
        usage=usage,
    )  # fmt: skip
    return msgspec.Raw(msgspec.json.encode(envelope))
