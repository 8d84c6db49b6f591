"""What every `dagnats` sub-command shares: the consoles, the error line with its hint,
`--json` output, the common options, and the helpers that run a coroutine with a client.

Errors are one readable line plus a hint, on stderr, with exit code 1 (2 for usage errors).
Imported by every module of `dagnats/cli/`; it imports no module of `dagnats/cli/` itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import nats.errors
import nats.js.errors
import typer
from rich.console import Console

from dagnats import json_input
from dagnats.loading import LoadError, load_attribute
from dagnats.runtime.connection import ConnectError, resolve_url
from dagnats.runtime.roles import Role
from kernel import limits
from kernel.errors import DagnatsError, WorkflowInvalidError

if TYPE_CHECKING:  # imported where used: `dagnats serve` needs neither (issue 14)
    from dagnats.client import Client
    from dagnats.worker import Worker

T = TypeVar("T")
# An input or payload file larger than any payload may be (whitespace included) is refused
# before it is parsed.
input_file_bytes_max = 4 * limits.payload_bytes_max
auth_probe_s = 2.0  # connecting to a server to read its INFO line (is auth required?)

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
        raise fail(redact(str(error).splitlines()[0]), hint) from None
    except nats.js.errors.NotFoundError as error:  # a stream, bucket or consumer is missing
        raise fail(
            f"NATS has no such JetStream resource: {_nats_text(error)}",
            "is `dagnats serve` running there? if the history stream is gone: restore it or "
            "start a new data dir",
        ) from None
    except nats.js.errors.ServiceUnavailableError:
        raise fail(
            "NATS answered, but JetStream did not: this server is not a `dagnats serve`",
            "start `dagnats serve`, or point --nats-url at its NATS",
        ) from None
    except (nats.errors.Error, OSError, TimeoutError) as error:
        hint = "is `dagnats serve` running?"
        raise fail(f"NATS request failed: {_nats_text(error)}", hint) from None


def _nats_text(error: BaseException) -> str:
    description = getattr(error, "description", None)
    text = str(description) if description else (str(error) or type(error).__name__)
    return redact(" ".join(text.split()))


def _hint_for(error: DagnatsError) -> str:
    name = type(error).__name__
    hints = {
        "RunNotFoundError": "list runs with `dagnats run list`",
        "WorkflowNotFoundError": "register it with `dagnats workflow register FILE`",
        "RunFinishedError": "see what happened with `dagnats run show RUN_ID`",
        "WaitTimeoutError": "wait longer with --timeout, or look with `dagnats run show`",
        "PayloadTooLargeError": "store large data elsewhere and pass a reference",
        "JsonInputError": "JSON is taken as written: fix the value at that path",
    }
    return hints.get(name, "")


def emit_json(value: Any) -> None:
    out.print_json(json.dumps(value, default=str))


async def with_client(
    url: str | None, action: Callable[[Client], Awaitable[T]], *, role: Role = "client"
) -> T:
    from dagnats.client import Client

    logging.getLogger("dagnats.connection").setLevel(logging.CRITICAL)  # one error line suffices
    try:
        client = await Client.connect(url, role=role)
    except ConnectError as error:
        target = resolve_url(url)
        if not error.known and await _requires_auth(target):
            raise AuthRefusedError(redact(target)) from None
        raise ConnectError(redact(str(error)), error.hint) from None
    try:
        return await action(client)
    finally:
        await client.close()


class AuthRefusedError(DagnatsError):
    """The NATS server is there and asks for credentials; ours were refused (or missing)."""

    hint = "check the user and password (nats://USER:PASSWORD@HOST:PORT) or the credentials"

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(
            f"NATS at {url} refused the connection: authorization failed "
            "(wrong or missing user, password or credentials)"
        )


_USERINFO = re.compile(r"(?<=://)([^:@/\s]*):[^@/\s]*@")


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***`."""
    return _USERINFO.sub(lambda match: f"{match.group(1)}:***@", text)


async def _requires_auth(url: str) -> bool:
    """Whether the server at `url` is up and says `auth_required` in its INFO line."""
    parsed = urllib.parse.urlsplit(url if "://" in url else f"nats://{url}")
    try:
        port = parsed.port or 4222
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(parsed.hostname or "127.0.0.1", port), auth_probe_s
        )
    except (OSError, ValueError, TimeoutError):
        return False
    try:
        line = await asyncio.wait_for(reader.readline(), auth_probe_s)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
    if not line.startswith(b"INFO "):
        return False
    try:
        info = json.loads(line[5:])
    except ValueError:
        return False
    return isinstance(info, dict) and info.get("auth_required") is True


def load_json_argument(text: str | None, file: Path | None, field: str) -> Any:
    """A JSON value from an option's text or a file; a clear error naming the option.

    The value is taken as written or refused (`dagnats.json_input`): not UTF-8, not JSON,
    NaN or Infinity, a key written twice, nesting deeper than `limits.json_depth_max`.
    """
    data: str | bytes | None = text
    if file is not None:
        try:
            data = file.read_bytes()
        except OSError as error:
            raise fail(f"{field}-file {file}: {error.strerror}", "pass a readable file") from None
        if len(data) > input_file_bytes_max:
            raise fail(
                f"{field}-file {file}: {len(data)} bytes is over the limit of "
                f"{input_file_bytes_max} bytes",
                "store large data elsewhere and pass a reference",
            )
    if data is None:
        return None
    try:
        return json_input.loads(data, field)
    except json_input.JsonInputError as error:
        source = f"{field}-file {file}" if file is not None else f"--{field}"
        hint = (
            f"e.g. --{field} '{{\"key\": 1}}'"
            if "valid JSON" in error.rule
            else "JSON is taken as written: fix the value at that path"
        )
        raise fail(f"{source}: {error}", hint) from None


def load_worker(spec: str) -> Worker:
    """The Worker named by `MODULE:ATTR` (a module path or a .py file)."""
    from dagnats.worker import Worker

    try:
        worker = load_attribute(spec, "worker")
    except LoadError as error:
        raise fail(str(error), error.hint, 2) from None
    if not isinstance(worker, Worker):
        raise fail(
            f"{spec} is a {type(worker).__name__}, not a dagnats.Worker", "name the Worker object"
        )
    return worker
