"""What an agent loop's turn handler returns and sees: `Continue`, `Done`, `ToolCall`.

```python
@worker.task("agent.turn")
async def turn(ctx: TaskContext) -> Continue | Done:
    # ctx.input: the step input; ctx.state: what the previous turn carried (None at turn 1);
    # ctx.tool_results: the previous turn's tool calls, failures included; ctx.turn; ctx.usage
    reply = await model(ctx.input, ctx.state, ctx.tool_results)
    usage = {"tokens_in": reply.tokens_in, "tokens_out": reply.tokens_out, "cost": reply.cost}
    if reply.final:
        return Done(reply.text, **usage)
    return Continue(reply.state, [ToolCall("search", {"q": reply.query}, id="c1")], **usage)
```

The worker encodes the returned value as the turn's result (`steps/agent_config.py` reads it);
this module holds the user-facing types and that encoding, and decodes a turn's task input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Any

import msgspec

from kernel.control import CHILD_TOOL
from kernel.workflow import WorkflowDef, workflow_to_document


@dataclass(frozen=True)
class ToolCall:
    """A tool call a turn asks for: the tool's name, its arguments (the tool task's input),
    and an id unique in the turn (`call<index>` when left empty)."""

    name: str
    arguments: Any = None
    id: str = ""


@dataclass(frozen=True)
class Continue:
    """Go on: carry `state` to the next turn, after running `tool_calls` (in parallel)."""

    state: Any = None
    tool_calls: Sequence[ToolCall] = ()
    _: KW_ONLY
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0


@dataclass(frozen=True)
class Done:
    """Stop: `output` is the agent loop step's output."""

    output: Any = None
    _: KW_ONLY
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0


@dataclass(frozen=True)
class ToolResult:
    """The result of one tool call of the previous turn: `output` when `ok`, else `error`
    (`{"message": ..., "kind": ...}`; a failure is a value the agent sees)."""

    id: str
    name: str
    ok: bool
    output: Any = None
    error: dict[str, str] | None = None


@dataclass(frozen=True)
class Usage:
    """What the loop used before this turn."""

    turns: int = 0
    tool_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0


@dataclass(frozen=True)
class TurnInput:
    """A turn's task input, unpacked."""

    input_raw: bytes
    state: Any
    tool_results: tuple[ToolResult, ...]
    turn: int
    usage: Usage = field(default_factory=Usage)


class _ToolResultWire(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    ok: bool
    output: Any = None
    error: dict[str, str] | None = None


class _UsageWire(msgspec.Struct, frozen=True, kw_only=True):
    turns: int = 0
    tool_calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0


class _EnvelopeWire(msgspec.Struct, frozen=True, kw_only=True):
    input: msgspec.Raw
    state: Any = None
    tool_results: tuple[_ToolResultWire, ...] = ()
    turn: int = 0
    usage: _UsageWire = _UsageWire()


_envelope_decoder = msgspec.json.Decoder(_EnvelopeWire)


def read_turn_input(data: bytes) -> TurnInput:
    """A turn's task input (the envelope steps/agent_envelope.py builds), unpacked."""
    envelope = _envelope_decoder.decode(data)
    results = tuple(
        ToolResult(id=r.id, name=r.name, ok=r.ok, output=r.output, error=r.error)
        for r in envelope.tool_results
    )
    usage = envelope.usage
    return TurnInput(
        input_raw=bytes(envelope.input),
        state=envelope.state,
        tool_results=results,
        turn=envelope.turn,
        usage=Usage(
            turns=usage.turns,
            tool_calls=usage.tool_calls,
            tokens_in=usage.tokens_in,
            tokens_out=usage.tokens_out,
            cost=usage.cost,
        ),
    )


def turn_result(value: object) -> dict[str, Any] | None:
    """The wire form of a turn handler's `Continue` or `Done`; None for anything else."""
    if isinstance(value, Continue):
        calls = [
            {"name": call.name, "arguments": call.arguments, "id": call.id}
            for call in value.tool_calls
        ]
        return {
            "agent": "continue", "state": value.state, "tool_calls": calls,
            "tokens_in": value.tokens_in, "tokens_out": value.tokens_out, "cost": value.cost,
        }  # fmt: skip
    if isinstance(value, Done):
        return {
            "agent": "done", "output": value.output,
            "tokens_in": value.tokens_in, "tokens_out": value.tokens_out, "cost": value.cost,
        }  # fmt: skip
    return None


def child_call(workflow: str | Mapping[str, Any] | WorkflowDef, input: Any, id: str) -> ToolCall:
    """The tool call that asks the engine for a child run (kernel/control.py): of the
    registered workflow named `workflow`, or of a definition (a workflow document as a dict,
    or a `WorkflowDef`), which the engine validates like any registration."""
    if isinstance(workflow, str):
        arguments: dict[str, Any] = {"workflow": workflow, "input": input}
    elif isinstance(workflow, WorkflowDef):
        arguments = {"definition": workflow_to_document(workflow), "input": input}
    else:
        arguments = {"definition": dict(workflow), "input": input}
    return ToolCall(CHILD_TOOL, arguments, id=id)


def with_children(value: object, children: Sequence[ToolCall]) -> object:
    """A turn's result with the child runs its handler started (`ctx.start_child`) among its
    tool calls (those it returned itself are not added twice)."""
    if not children or not isinstance(value, Continue):
        return value
    returned = {call.id for call in value.tool_calls}
    added = [call for call in children if call.id not in returned]
    return replace(value, tool_calls=(*value.tool_calls, *added))
