"""`dagnats workflow validate|register|list|show`: workflow definitions.

`validate` works offline; the others go through the Client. Imports `dagnats.cli.common` and
the rest of the project, never `dagnats.cli`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from dagnats import json_input
from dagnats.cli import render
from dagnats.cli.common import (
    JsonOption,
    UrlOption,
    emit_json,
    err,
    fail,
    out,
    run_async,
    with_client,
)
from dagnats.client import Client
from dagnats.runtime.triggers_plan import check_zones
from kernel.errors import WorkflowInvalidError
from kernel.workflow import parse_workflow
from steps.respond import respond_warnings


def register(workflow_app: typer.Typer) -> None:
    """Add the `workflow` commands to their sub-app."""
    workflow_app.command("validate")(workflow_validate)
    workflow_app.command("register")(workflow_register)
    workflow_app.command("list")(workflow_list)
    workflow_app.command("show")(workflow_show)


def read_workflow_file(file: Path) -> bytes:
    """The file's bytes, refused (WorkflowInvalidError) when an object repeats a key."""
    try:
        data = file.read_bytes()
    except OSError as error:
        raise fail(f"{file}: {error.strerror}", "pass the path of a workflow JSON file") from None
    json_input.check_workflow_keys(data)
    return data


def workflow_validate(file: Path, as_json: JsonOption = False) -> None:
    """Validate a workflow file offline (no server needed)."""
    try:
        workflow = parse_workflow(read_workflow_file(file))
    except WorkflowInvalidError as error:
        if as_json:
            problems = [render.to_plain(problem) for problem in error.problems]
            emit_json({"valid": False, "problems": problems})
            raise typer.Exit(1) from None
        for problem in error.problems:
            err.print(f"  {problem}", highlight=False, soft_wrap=True)
        raise fail(
            f"{file}: {len(error.problems)} problem(s)", "fix the fields listed above"
        ) from None
    if as_json:
        emit_json({"valid": True, "name": workflow.name, "steps": len(workflow.steps)})
    else:
        out.print(f"{file}: workflow {workflow.name!r} is valid ({len(workflow.steps)} steps)")


def workflow_register(file: Path, nats_url: UrlOption = None, as_json: JsonOption = False) -> None:
    """Register (or update) a workflow from a JSON file."""
    workflow = parse_workflow_or_exit(file)

    async def action(client: Client) -> int:
        return await client.register_workflow(workflow)

    revision = run_async(with_client(nats_url, action))
    warnings = list(respond_warnings(workflow))
    if as_json:
        emit_json({"name": workflow.name, "revision": revision, "warnings": warnings})
    else:
        out.print(f"registered workflow {workflow.name!r} (revision {revision})")
        for warning in warnings:
            err.print(f"warning: {warning}", highlight=False, soft_wrap=True)


def parse_workflow_or_exit(file: Path) -> Any:
    try:
        return check_zones(parse_workflow(read_workflow_file(file)))
    except WorkflowInvalidError as error:
        for problem in error.problems:
            err.print(f"  {problem}", highlight=False, soft_wrap=True)
        raise fail(
            f"{file}: {len(error.problems)} problem(s)", "fix the fields listed above"
        ) from None


def workflow_list(nats_url: UrlOption = None, as_json: JsonOption = False) -> None:
    """List registered workflows."""
    names = run_async(with_client(nats_url, lambda client: client.list_workflows()))
    if as_json:
        emit_json(names)
    else:
        for name in names:
            out.print(name)
        if not names:
            err.print("no workflows registered; `dagnats workflow register FILE` adds one")


def workflow_show(
    name: str,
    revision: Annotated[int | None, typer.Option(help="A past revision.")] = None,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a registered workflow (the latest revision unless --revision)."""
    if revision is not None and revision < 1:
        raise fail(
            f"--revision {revision} is not a revision: each workflow's are numbered from 1",
            f"see them with `dagnats workflow show {name}`",
            2,
        )

    async def action(client: Client) -> tuple[Any, list[int]]:
        workflow = await client.get_workflow(name, revision)
        return render.workflow_document(workflow), await client.workflow_revisions(name)

    document, revisions = run_async(with_client(nats_url, action))
    if as_json:
        emit_json({"workflow": document, "revisions": revisions})
    else:
        out.print_json(json.dumps(document))
        out.print(f"revisions: {', '.join(map(str, revisions))}")
