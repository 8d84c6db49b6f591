"""`agent_turn`: an `agent_loop` turn handler that calls a model.

```python
worker.add("agent.code", agent_turn(model=OpenAIChat("gpt-4o-mini"), system=SYSTEM, tools=tools))
```

Each turn rebuilds the conversation from what the loop carries, never from process memory:
the previous turn's state (`Continue.state`: the messages so far) plus the tool results the
engine hands it (`ctx.tool_results`). So a turn run again after a crash sends the same
conversation, and a finished turn, recorded in history, is never asked again. The model's tool
calls become `ToolCall`s (run as durable tasks); a call the toolset cannot run (unknown tool,
arguments that are not JSON or do not match) is answered at once with a tool error the model
sees next turn. The final answer is `Done(text)`, or, with `output_type`, the answer decoded
as that msgspec type; one that does not decode is fed back as an error, at most
`output_retries` times, then the turn fails for good. Usage and cost (`PriceTable`) go with
every `Continue`/`Done`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec

from dagnats.agent import Continue, Done, ToolCall, ToolResult
from dagnats.llm.live import LiveSink
from dagnats.llm.model import (
    CallRequest,
    Message,
    Model,
    ModelReply,
    ModelRequest,
    PriceTable,
    ToolSpec,
)
from dagnats.llm.tools import Toolset
from dagnats.runtime import settings
from dagnats.worker_context import NonRetryableError, TaskContext
from kernel.control import CHILD_TOOL

output_retries_default: Final = settings.llm_output_retries_default
output_retries_max: Final = settings.llm_output_retries_max
tool_result_chars_max: Final = settings.llm_tool_result_chars_max
max_tokens_default: Final = settings.llm_max_tokens_default
conversation_bytes_max: Final = settings.llm_conversation_bytes_max

TurnHandler = Callable[[TaskContext], Awaitable[Continue | Done]]

START_WORKFLOW: Final = "start_workflow"  # the model's tool for a child run (child_runs=True)
START_WORKFLOW_SPEC: Final = ToolSpec(
    name=START_WORKFLOW,
    description=(
        "Start a child run: of a registered workflow (`workflow`: its name) or of a workflow "
        "you write (`definition`: a DagNats workflow document, {name, steps: [{id, task, "
        "depends_on}]}), with `input`. Its output (or why it was refused or failed) is this "
        "call's result, next turn. The run's quotas bound how many you may start."
    ),
    parameters={
        "type": "object",
        "properties": {
            "workflow": {"type": "string"},
            "definition": {"type": "object"},
            "input": {},
        },
        "additionalProperties": False,
    },
)


class TurnState(msgspec.Struct, frozen=True, kw_only=True):
    """What a turn carries to the next: the conversation, and how many final answers did not
    decode as the output type."""

    messages: tuple[Message, ...] = ()
    output_errors: int = 0


def render_input(value: Any) -> str:
    """The first user message: the step input as text (a string as it is, else JSON)."""
    if isinstance(value, str):
        return value
    return msgspec.json.encode(value).decode()


def agent_turn(
    *, model: Model, system: str = "", tools: Toolset | None = None,
    tool_names: tuple[str, ...] | None = None, output_type: Any = None,
    prompt: Callable[[Any], str] = render_input, prices: PriceTable | None = None,
    max_tokens: int = max_tokens_default, output_retries: int = output_retries_default,
    child_runs: bool = False,
) -> TurnHandler:  # fmt: skip
    """An `agent_loop` turn handler calling `model` with `tools` (all, or `tool_names`); with
    `child_runs`, also the `start_workflow` tool: a child run, started through the control
    plane (`ctx.start_child`; the workflow file's `child_runs` must allow it).

    Raises:
        ValueError: output_retries outside 0..output_retries_max, max_tokens below 1.
    """
    if not 0 <= output_retries <= output_retries_max:
        raise ValueError(
            f"output_retries {output_retries} must be within 0..{output_retries_max} "
            "(output_retries_max)"
        )
    if max_tokens < 1:
        raise ValueError(f"max_tokens {max_tokens} must be at least 1")
    toolset = tools or Toolset()
    specs = toolset.specs(tool_names) + ((START_WORKFLOW_SPEC,) if child_runs else ())
    table = prices or PriceTable()

    async def turn(ctx: TaskContext) -> Continue | Done:
        state = read_state(ctx.state)
        messages = list(state.messages) or [Message(role="user", text=prompt(ctx.input))]
        messages += [tool_message(result) for result in ctx.tool_results]
        request = ModelRequest(
            system=system, messages=tuple(messages), tools=specs, max_tokens=max_tokens
        )
        live = LiveSink(ctx)
        try:
            reply = await model.complete(request, live.sink)
        finally:
            await live.end()
        usage: dict[str, Any] = {
            "tokens_in": reply.tokens_in, "tokens_out": reply.tokens_out,
            "cost": table.cost(reply.model, reply.tokens_in, reply.tokens_out),
        }  # fmt: skip
        calls = tuple(
            msgspec.structs.replace(call, id=call.id or f"t{ctx.turn}c{index}")
            for index, call in enumerate(reply.tool_calls)
        )
        messages.append(Message(role="assistant", text=reply.text, tool_calls=calls))
        if calls:
            runnable = []
            for call in calls:
                if child_runs and call.name == START_WORKFLOW and isinstance(call.arguments, dict):
                    runnable.append(ToolCall(CHILD_TOOL, call.arguments, id=call.id))
                    continue
                problem = toolset.check(call)
                if problem is None:
                    runnable.append(ToolCall(call.name, call.arguments, id=call.id))
                else:
                    messages.append(tool_error(call, problem))
            carried = TurnState(messages=tuple(messages), output_errors=state.output_errors)
            return Continue(carry(carried, reply.model), runnable, **usage)
        if output_type is None:
            return Done(reply.text, **usage)
        return final_answer(reply, output_type, output_retries, state, messages, usage)

    return turn


def final_answer(
    reply: ModelReply, output_type: Any, output_retries: int, state: TurnState,
    messages: list[Message], usage: dict[str, Any],
) -> Continue | Done:  # fmt: skip
    """Done with the answer decoded as `output_type`, or Continue with the error fed back.

    Raises:
        NonRetryableError: it did not decode `output_retries` times already.
    """
    decoded = decode_answer(reply, output_type)
    if not isinstance(decoded, str):
        return Done(msgspec.to_builtins(decoded[0]), **usage)
    if state.output_errors >= output_retries:
        raise NonRetryableError(
            f"model {reply.model!r}: the final answer did not decode as "
            f"{_type_name(output_type)} after {state.output_errors + 1} tries "
            f"(output_retries {output_retries}): {decoded}"
        )
    feedback = msgspec.json.encode(
        {"error": {"kind": "invalid_output", "message": decoded,
                   "hint": f"answer again with JSON only, matching {_type_name(output_type)}"}}
    ).decode()  # fmt: skip
    carried = TurnState(
        messages=(*messages, Message(role="user", text=feedback)),
        output_errors=state.output_errors + 1,
    )
    return Continue(carry(carried, reply.model), (), **usage)


def carry(state: TurnState, model: str) -> Any:
    """The state to carry to the next turn, within `conversation_bytes_max`.

    Raises:
        NonRetryableError: the conversation is larger (naming its size, the bound and a hint).
    """
    size = len(msgspec.json.encode(state))
    if size > conversation_bytes_max:
        raise NonRetryableError(
            f"model {model!r}: the conversation to carry to the next turn is {size} bytes; the "
            f"limit is {conversation_bytes_max} bytes (llm_conversation_bytes_max). Hint: end "
            "the loop sooner (max_turns, on_limit continue_as_new) or return shorter tool results"
        )
    return msgspec.to_builtins(state)


def read_state(value: Any) -> TurnState:
    """The carried state (an empty one at turn 1).

    Raises:
        NonRetryableError: the state is not one `agent_turn` carried.
    """
    if value is None:
        return TurnState()
    try:
        return msgspec.convert(value, TurnState)
    except msgspec.ValidationError as error:
        raise NonRetryableError(f"the turn's carried state is not agent_turn's: {error}") from None


def tool_message(result: ToolResult) -> Message:
    """A tool result as the model sees it (cut to `tool_result_chars_max`)."""
    if result.ok:
        output = result.output
        text = output if isinstance(output, str) else msgspec.json.encode(output).decode()
    else:
        error = result.error or {}
        text = f"error ({error.get('kind', 'error')}): {error.get('message', '')}"
    if len(text) > tool_result_chars_max:
        text = text[:tool_result_chars_max] + f"... [cut at {tool_result_chars_max} characters]"
    name = START_WORKFLOW if result.name == CHILD_TOOL else result.name
    return Message(role="tool", call_id=result.id, name=name, text=text, ok=result.ok)


def tool_error(call: CallRequest, problem: str) -> Message:
    return Message(role="tool", call_id=call.id, name=call.name, text=f"error: {problem}", ok=False)


def decode_answer(reply: ModelReply, output_type: Any) -> tuple[Any] | str:
    """(the answer as `output_type`,) or why it does not decode. Code fences are stripped."""
    text = reply.text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    try:
        return (msgspec.json.decode(text.encode(), type=output_type),)
    except msgspec.DecodeError as error:
        return f"the answer does not decode as {_type_name(output_type)}: {error}"


def _type_name(kind: Any) -> str:
    return str(getattr(kind, "__name__", kind))
