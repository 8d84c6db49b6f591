"""What every `dagnats` sub-command shares: the consoles, the error line with its hint,
`--json` output, the common options, and the helpers that run a coroutine with a client.

Errors are one readable line plus a hint, on stderr, with exit code 1 (2 for usage errors).
Imported by every module of `dagnats/cli/`; it imports no module of `dagnats/cli/` itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from dagnats.client import Client
from dagnats.loading import LoadError, load_attribute
from dagnats.runtime.roles import Role
from dagnats.worker import Worker
from kernel.errors import DagnatsError, WorkflowInvalidError

T = TypeVar("T")

out = Console()
err = Console(stderr=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
LogJsonOption = Annotated[
    bool, typer.Option("--log-json", help="Log one JSON object per line (default key=value).")
]
UrlOption = Annotated[
    str | None,
    typer.Option("--nats-url", envvar="DAGNATS_NATS_URL", help="NATS URL (default: local serve)."),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", envvar="DAGNATS_DATA_DIR", help="The serve's data dir (default ~/.dagnats)."
    ),
]


def fail(message: str, hint: str = "", code: int = 1) -> typer.Exit:
    """Print one error line (and a hint) to stderr; return the Exit to raise."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    if hint:
        err.print(f"[dim]hint:[/dim] {hint}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; turn the project's errors into one line plus a hint."""
    try:
        return asyncio.run(coroutine)
    except WorkflowInvalidError as error:
        for problem in error.problems:
            err.print(f"  {problem}", highlight=False, soft_wrap=True)
        raise fail(str(error).splitlines()[0], "fix the fields listed above") from None
    except DagnatsError as error:
        hint = getattr(error, "hint", "") or _hint_for(error)
        raise fail(str(error).splitlines()[0], hint) from None


def _hint_for(error: DagnatsError) -> str:
    name = type(error).__name__
    hints = {
        "RunNotFoundError": "list runs with `dagnats run list`",
        "WorkflowNotFoundError": "register it with `dagnats workflow register FILE`",
        "RunFinishedError": "see what happened with `dagnats run show RUN_ID`",
        "WaitTimeoutError": "wait longer with --timeout, or look with `dagnats run show`",
        "PayloadTooLargeError": "store large data elsewhere and pass a reference",
    }
    return hints.get(name, "")


def emit_json(value: Any) -> None:
    out.print_json(json.dumps(value, default=str))


async def with_client(
    url: str | None, action: Callable[[Client], Awaitable[T]], *, role: Role = "client"
) -> T:
    logging.getLogger("dagnats.connection").setLevel(logging.ERROR)  # one error line suffices
    client = await Client.connect(url, role=role)
    try:
        return await action(client)
    finally:
        await client.close()


def load_json_argument(text: str | None, file: Path | None, field: str) -> Any:
    """A JSON value from an option's text or a file; a clear error naming the option."""
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as error:
            raise fail(f"{field}-file {file}: {error.strerror}", "pass a readable file") from None
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise fail(
            f"{field} is not valid JSON: {error}", f"e.g. --{field} '{{\"key\": 1}}'"
        ) from None


def load_worker(spec: str) -> Worker:
    """The Worker named by `MODULE:ATTR` (a module path or a .py file)."""
    try:
        worker = load_attribute(spec, "worker")
    except LoadError as error:
        raise fail(str(error), error.hint, 2) from None
    if not isinstance(worker, Worker):
        raise fail(
            f"{spec} is a {type(worker).__name__}, not a dagnats.Worker", "name the Worker object"
        )
    return worker
