"""`dagnats credential list|add-approver|add-worker`: the data dir's NATS credentials.

Files only: a credential is created 0600 in `<data dir>/credentials/` and serve loads it at its
next start. Passwords are never printed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dagnats.cli.common import DataDirOption, JsonOption, fail, out
from dagnats.runtime import credentials
from dagnats.runtime.connection import default_data_dir

credential_app = typer.Typer(
    help="The data dir's NATS credentials (one file per user; serve loads new ones at its "
    "next start).",
    no_args_is_help=True,
)


def _data_dir(data_dir: Path | None) -> Path:
    return data_dir if data_dir is not None else default_data_dir()


@credential_app.command("list")
def list_credentials(data_dir: DataDirOption = None, as_json: JsonOption = False) -> None:
    """List the users (name, role, identity, task types); never their passwords."""
    directory = credentials.credentials_dir(_data_dir(data_dir))
    if not directory.is_dir():
        raise fail(f"no credentials in {directory}", "start `dagnats serve` once to make them")
    try:
        found = credentials.ensure_credentials(_data_dir(data_dir))
    except credentials.CredentialError as error:
        raise fail(str(error), error.hint) from None
    rows = [
        {"file": f"{stem}.json", "user": c.user, "role": c.role, "identity": c.identity,
         "task_types": list(c.task_types)}
        for stem, c in sorted(found.items())
    ]  # fmt: skip
    if as_json:
        out.print(json.dumps(rows), highlight=False, soft_wrap=True)
        return
    for row in rows:
        scope = ",".join(row["task_types"]) or ("*" if row["role"] == "worker" else "")
        out.print(f"{row['file']:<28} {row['role']:<9} {row['identity'] or scope}",
                  highlight=False, soft_wrap=True)  # fmt: skip


@credential_app.command("add-approver")
def add_approver(identity: str, data_dir: DataDirOption = None) -> None:
    """Create the credential of approver IDENTITY (its decisions are recorded under it)."""
    try:
        path = credentials.add_approver(_data_dir(data_dir), identity)
    except credentials.CredentialError as error:
        raise fail(str(error), error.hint or "pick another identity") from None
    out.print(f"created {path} (restart serve to load it; hand the file to {identity})",
              highlight=False, soft_wrap=True)  # fmt: skip


@credential_app.command("add-worker")
def add_worker(
    name: str,
    task_types: Annotated[
        list[str],
        typer.Option("--task-type", help="A task type it may serve (repeat the option)."),
    ],
    data_dir: DataDirOption = None,
) -> None:
    """Create a worker credential limited to some task types: it may fetch only those, and
    report only the tasks it was given."""
    try:
        path = credentials.add_worker(_data_dir(data_dir), name, task_types)
    except credentials.CredentialError as error:
        raise fail(str(error), error.hint or "check the name and --task-type values") from None
    out.print(f"created {path} (restart serve to load it; run the worker with --creds {path})",
              highlight=False, soft_wrap=True)  # fmt: skip
