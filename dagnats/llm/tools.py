"""Tools declared once, as typed Python functions: the model's tool list and the worker tasks
that run them come from the same declaration, so names and schemas cannot drift.

```python
tools = Toolset(prefix="code.")

@tools.tool
async def read_file(ctx: TaskContext, path: str, max_bytes: int = 65_536) -> str:
    "Read a file of the repository."
    ...

tools.register(worker)          # worker tasks code.read_file, ...
tools.config()                  # {"read_file": "code.read_file"}: the loop's `tools` config
```

The argument schema comes from the signature (a leading `ctx: TaskContext` is not an
argument), or from the one msgspec Struct the function takes. Plain functions run in a thread.

This module does no I/O of its own.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Callable
from typing import Any, Final, TypeVar, get_type_hints, overload

import msgspec

from dagnats.llm.model import CallRequest, ToolSpec
from dagnats.runtime import settings
from dagnats.worker_context import NonRetryableError, TaskContext

tool_description_chars_max: Final = settings.llm_tool_description_chars_max
tools_per_set_max: Final = settings.llm_tools_per_set_max
F = TypeVar("F", bound=Callable[..., Any])
_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what both providers accept


class Tool:
    """One tool: its name, description, argument type and function."""

    def __init__(self, function: Callable[..., Any], name: str, description: str) -> None:
        if not _NAME.match(name):
            raise ValueError(f"tool name {name!r} must match {_NAME.pattern} (the providers' rule)")
        self.function = function
        self.name = name
        self.description = description[:tool_description_chars_max]
        hints = get_type_hints(function)
        parameters = list(inspect.signature(function).parameters.values())
        self.takes_context = bool(parameters) and hints.get(parameters[0].name) is TaskContext
        if self.takes_context:
            parameters = parameters[1:]
        self.one_struct = len(parameters) == 1 and _is_struct(hints.get(parameters[0].name))
        if self.one_struct:
            self.arguments_type: type[msgspec.Struct] = hints[parameters[0].name]
        else:
            fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
            for parameter in parameters:
                if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                    raise ValueError(f"tool {name!r}: parameter {parameter.name!r} must be named")
                if parameter.name not in hints:
                    raise ValueError(f"tool {name!r}: parameter {parameter.name!r} needs a type")
                kind = hints[parameter.name]
                if parameter.default is parameter.empty:
                    fields.append((parameter.name, kind))
                else:
                    fields.append((parameter.name, kind, parameter.default))
            self.arguments_type = msgspec.defstruct(
                f"{name}_arguments", fields, kw_only=True, forbid_unknown_fields=True
            )

    def spec(self) -> ToolSpec:
        """The tool as the model sees it (JSON Schema of the arguments, `$defs` kept)."""
        schema = msgspec.json.schema(self.arguments_type)
        definitions = dict(schema.get("$defs", {}))
        reference = schema.get("$ref", "")
        top = definitions.pop(reference.rsplit("/", 1)[-1], schema) if reference else schema
        top = {key: value for key, value in top.items() if key != "title"}
        if definitions:
            top["$defs"] = definitions
        return ToolSpec(name=self.name, description=self.description, parameters=top)

    def check(self, call: CallRequest) -> str | None:
        """Why the model's call cannot run (the error the model is shown), or None."""
        if call.raw:
            return f"the arguments are not JSON: {call.raw[:200]!r}"
        try:
            msgspec.convert(call.arguments, self.arguments_type)
        except msgspec.ValidationError as error:
            return f"the arguments do not match the tool's schema: {error}"
        return None

    async def run(self, ctx: TaskContext) -> Any:
        """Call the function with the task's input as its arguments.

        Raises:
            NonRetryableError: the input does not match the arguments (retrying cannot help).
        """
        try:
            arguments = msgspec.json.decode(ctx.input_raw, type=self.arguments_type)
        except msgspec.ValidationError as error:
            raise NonRetryableError(f"tool {self.name!r}: {error}") from None
        leading = (ctx,) if self.takes_context else ()
        if self.one_struct:
            call: Callable[[], Any] = lambda: self.function(*leading, arguments)  # noqa: E731
        else:
            named = msgspec.structs.asdict(arguments)
            call = lambda: self.function(*leading, **named)  # noqa: E731
        if inspect.iscoroutinefunction(self.function):
            return await call()
        return await asyncio.to_thread(call)


def _is_struct(kind: object) -> bool:
    return isinstance(kind, type) and issubclass(kind, msgspec.Struct)


class Toolset:
    """The tools of one or more agents; each runs as the worker task `<prefix><name>`."""

    def __init__(self, prefix: str = "tools.") -> None:
        self.prefix = prefix
        self.tools: dict[str, Tool] = {}

    @overload
    def tool(self, function: F) -> F: ...

    @overload
    def tool(
        self, function: None = None, *, name: str | None = None, description: str | None = None
    ) -> Callable[[F], F]: ...

    def tool(
        self, function: F | None = None, *, name: str | None = None,
        description: str | None = None,
    ) -> F | Callable[[F], F]:  # fmt: skip
        """Declare a tool (as `@tools.tool` or `@tools.tool(name=..., description=...)`);
        the description defaults to the docstring.

        Raises:
            ValueError: a duplicate or invalid name, an untyped parameter, too many tools.
        """

        def declare(fn: F) -> F:
            tool_name = name or fn.__name__
            if tool_name in self.tools:
                raise ValueError(f"tool {tool_name!r} is declared twice")
            if len(self.tools) >= tools_per_set_max:
                raise ValueError(f"a Toolset holds at most {tools_per_set_max} tools")
            text = description or inspect.getdoc(fn) or tool_name
            self.tools[tool_name] = Tool(fn, tool_name, text)
            return fn

        return declare(function) if function is not None else declare

    def task_of(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def specs(self, names: tuple[str, ...] | None = None) -> tuple[ToolSpec, ...]:
        """The model's tool list (all tools, or those named)."""
        chosen = self.tools if names is None else {n: self.tools[n] for n in names}
        return tuple(tool.spec() for tool in chosen.values())

    def config(self, names: tuple[str, ...] | None = None) -> dict[str, str]:
        """The agent loop's `tools` config: tool name -> worker task."""
        chosen = self.tools if names is None else {n: self.tools[n] for n in names}
        return {name: self.task_of(name) for name in chosen}

    def register(self, worker: Any) -> None:
        """Register every tool as a task of `worker` (a `dagnats.Worker`)."""
        for tool in self.tools.values():
            worker.add(self.task_of(tool.name), tool.run)

    def check(self, call: CallRequest) -> str | None:
        """Why the model's call cannot run (unknown tool, bad arguments), or None."""
        tool = self.tools.get(call.name)
        if tool is None:
            return f"unknown tool {call.name!r} (known: {', '.join(self.tools)})"
        return tool.check(call)
