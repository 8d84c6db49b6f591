"""The `agent_loop` step's config, and the turn result a worker sends back. Pure: no I/O.

Config fields: `max_turns` (`max_iterations` is its alias), `max_duration`, `max_tokens`,
`max_cost`, `loop_delay`, `on_limit` (`fail`, `complete` or `continue_as_new`),
`continue_as_new_after_turns`, `tools` (tool name -> worker task). A loop that may continue as
new must be a root step (the fresh run's input carries its state). `approval_tools` names the
tools whose calls wait for a human approval (steps/approvals.py) before they run; `approval_timeout`
bounds that wait (a rejection or a timeout is a failed tool result the agent sees).

A turn's result (the worker encodes `Continue`/`Done` this way) is
`{"agent": "continue", "state": ..., "tool_calls": [{"name", "arguments", "id"}], "tokens_in",
"tokens_out", "cost"}` or `{"agent": "done", "output": ..., ...usage}`.
"""

from __future__ import annotations

import math
from typing import Annotated, Final, Literal

import msgspec

from kernel import limits
from kernel.errors import Problem, show_value
from kernel.events import NULL, AgentToolCall
from kernel.workflow import StepDef
from kernel.workflow.durations import parse_duration
from steps.config_read import config_document, read_int, read_names, unknown_fields

CONFIG_FIELDS: Final = (
    "max_turns", "max_iterations", "max_duration", "max_tokens", "max_cost", "loop_delay",
    "on_limit", "continue_as_new_after_turns", "approval_tools", "approval_timeout", "tools",
)  # fmt: skip
ON_LIMIT: Final = ("fail", "complete", "continue_as_new")
max_turns_default: Final = 20
OnLimit = Literal["fail", "complete", "continue_as_new"]


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True):
    max_turns: Annotated[int, msgspec.Meta(ge=1, le=limits.agent_turns_max)] = max_turns_default
    max_duration_ms: Annotated[int, msgspec.Meta(ge=1, le=limits.timeout_ms_max)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=limits.agent_tokens_max)] | None = None
    max_cost: Annotated[float, msgspec.Meta(gt=0, le=limits.agent_cost_max)] | None = None
    loop_delay_ms: Annotated[int, msgspec.Meta(ge=0, le=limits.timeout_ms_max)] = 0
    on_limit: OnLimit = "fail"
    tools: tuple[tuple[str, str], ...] | None = None  # None: a tool's name is its task
    continue_as_new_after_turns: (
        Annotated[int, msgspec.Meta(ge=1, le=limits.agent_turns_max)] | None
    ) = None
    approval_tools: tuple[str, ...] = ()
    approval_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=limits.timeout_ms_max)] | None = None

    def task_of(self, tool: str) -> str:
        """The worker task running `tool`, or "" when the loop does not know it."""
        if self.tools is None:
            return tool
        return next((task for name, task in self.tools if name == tool), "")


def read_config(step: StepDef, path: str) -> AgentConfig | tuple[Problem, ...]:
    """The agent loop's config, or every problem with it."""
    document = config_document(step)
    problems: list[Problem] = []
    unknown_fields(document, CONFIG_FIELDS, path, problems)
    turns_key = "max_iterations" if "max_iterations" in document else "max_turns"
    if "max_iterations" in document and "max_turns" in document:
        rule = "max_iterations is an alias of max_turns: give one of them"
        problems.append(Problem(path=f"{path}.config.max_iterations", value="both", rule=rule))
    max_turns = read_int(
        document, turns_key, path, problems,
        low=1, high=limits.agent_turns_max, default=max_turns_default,
    )  # fmt: skip
    max_duration = _duration(document, "max_duration", path, problems)
    loop_delay = _duration(document, "loop_delay", path, problems) or 0
    max_tokens = None
    if document.get("max_tokens") is not None:
        max_tokens = read_int(
            document, "max_tokens", path, problems, low=1, high=limits.agent_tokens_max, default=1
        )
    max_cost = _cost(document, path, problems)
    on_limit = document.get("on_limit", "fail")
    if on_limit not in ON_LIMIT:
        rule = f"must be one of {', '.join(ON_LIMIT)}"
        problems.append(
            Problem(path=f"{path}.config.on_limit", value=show_value(on_limit), rule=rule)
        )
    after_turns = None
    if document.get("continue_as_new_after_turns") is not None:
        after_turns = read_int(
            document, "continue_as_new_after_turns", path, problems,
            low=1, high=limits.agent_turns_max, default=1,
        )  # fmt: skip
    continues = on_limit == "continue_as_new" or after_turns is not None
    if continues and step.depends_on:
        rule = "a loop that continues as new must be a root step (no depends_on)"
        value = show_value(list(step.depends_on))
        problems.append(Problem(path=f"{path}.depends_on", value=value, rule=rule))
    tools = _tools(document, path, problems)
    approval_tools = read_names(document, "approval_tools", path, problems) or ()
    approval_timeout = _duration(document, "approval_timeout", path, problems)
    if tools is not None:
        for index, name in enumerate(approval_tools):
            if name not in dict(tools):
                rule = f"names no tool of this loop (known: {', '.join(dict(tools))})"
                where = f"{path}.config.approval_tools[{index}]"
                problems.append(Problem(path=where, value=show_value(name), rule=rule))
    if problems:
        return tuple(problems)
    return AgentConfig(
        max_turns=max_turns,
        max_duration_ms=max_duration,
        max_tokens=max_tokens,
        max_cost=max_cost,
        loop_delay_ms=loop_delay,
        on_limit=_on_limit(on_limit),
        tools=tools,
        continue_as_new_after_turns=after_turns,
        approval_tools=approval_tools,
        approval_timeout_ms=approval_timeout,
    )


def _on_limit(value: object) -> OnLimit:
    if value == "complete":
        return "complete"
    return "continue_as_new" if value == "continue_as_new" else "fail"


def _duration(
    document: dict[str, object], key: str, path: str, problems: list[Problem]
) -> int | None:
    value = document.get(key)
    if value is None:
        return None
    parsed = parse_duration(value, f"{path}.config.{key}")
    if isinstance(parsed, Problem):
        problems.append(parsed)
        return None
    if parsed > limits.timeout_ms_max:
        rule = f"must be at most {limits.timeout_ms_max} ms (timeout_ms_max)"
        problems.append(Problem(path=f"{path}.config.{key}", value=str(parsed), rule=rule))
        return None
    return parsed


def _cost(document: dict[str, object], path: str, problems: list[Problem]) -> float | None:
    value = document.get("max_cost")
    if value is None:
        return None
    number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else -1
    if not 0 < number <= limits.agent_cost_max or not math.isfinite(number):
        rule = f"must be a number above 0 and at most {limits.agent_cost_max:g}"
        problems.append(Problem(path=f"{path}.config.max_cost", value=show_value(value), rule=rule))
        return None
    return number


def _tools(
    document: dict[str, object], path: str, problems: list[Problem]
) -> tuple[tuple[str, str], ...] | None:
    value = document.get("tools")
    if value is None:
        return None
    rule = "must be an object of tool name -> worker task name (non-empty strings)"
    if not isinstance(value, dict) or not all(
        isinstance(name, str) and name and isinstance(task, str) and task
        and len(name) <= limits.agent_tool_name_length_max
        and len(task) <= limits.task_name_length_max
        for name, task in value.items()
    ):  # fmt: skip
        problems.append(Problem(path=f"{path}.config.tools", value=show_value(value), rule=rule))
        return None
    return tuple((str(name), str(task)) for name, task in value.items())


# -- the turn result ----------------------------------------------------------------------


class ToolCallReport(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    arguments: msgspec.Raw = NULL
    id: str = ""


class TurnReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a turn's handler returned, as the worker encodes `Continue` and `Done`."""

    agent: Literal["continue", "done"]
    state: msgspec.Raw = NULL
    output: msgspec.Raw = NULL
    tool_calls: tuple[ToolCallReport, ...] = ()
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0


_report_decoder = msgspec.json.Decoder(TurnReport)


def read_report(output: msgspec.Raw) -> TurnReport | str:
    """The turn's result, or why it is not one (a message for the turn's failure)."""
    try:
        report = _report_decoder.decode(bytes(output))
    except msgspec.DecodeError as error:
        shown = bytes(output)[:80].decode(errors="replace")
        return f"a turn must return Continue(...) or Done(...); got {shown} ({error})"
    tokens_ok = all(
        0 <= n <= limits.agent_tokens_max for n in (report.tokens_in, report.tokens_out)
    )
    if not tokens_ok:
        return f"tokens_in and tokens_out must be from 0 to {limits.agent_tokens_max}"
    if not (math.isfinite(report.cost) and 0 <= report.cost <= limits.agent_cost_max):
        return f"cost {report.cost!r} must be a number from 0 to {limits.agent_cost_max:g}"
    calls = report.tool_calls
    if len(calls) > limits.agent_tool_calls_per_turn_max:
        return (
            f"the turn asked for {len(calls)} tool calls; the limit is "
            f"{limits.agent_tool_calls_per_turn_max} (agent_tool_calls_per_turn_max)"
        )
    for index, call in enumerate(calls):
        if not call.name or len(call.name) > limits.agent_tool_name_length_max:
            return f"tool_calls[{index}].name {call.name!r} must be 1..128 characters"
    ids = [call.id or f"call{index}" for index, call in enumerate(calls)]
    if len(set(ids)) != len(ids):
        return f"tool call ids must be unique in a turn; got {ids}"
    return report


def tool_calls_of(report: TurnReport) -> tuple[AgentToolCall, ...]:
    """The report's tool calls with their ids (`call<index>` when the handler gave none)."""
    return tuple(
        AgentToolCall(id=call.id or f"call{index}", name=call.name, arguments=call.arguments)
        for index, call in enumerate(report.tool_calls)
    )
