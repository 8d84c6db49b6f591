"""`/v1/workflows`: register, list, show (a revision) and validate (offline) workflows.

Mirrors `dagnats workflow register|list|show|validate` and `Client.register_workflow`,
`list_workflows`, `get_workflow`, `workflow_revisions`, `validate_workflow`. The body of
register and validate is the workflow JSON itself, read as written (a key written twice is a
problem, as in the CLI).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, get, post
from litestar.params import FromPath, JSONBody, Parameter

from dagnats.api.services import ServicesDep
from dagnats.api.views import (
    ValidationView,
    WorkflowListView,
    WorkflowRegisteredView,
    WorkflowView,
)
from dagnats.client import Client, WorkflowNotFoundError
from kernel import codec
from kernel.errors import WorkflowInvalidError
from kernel.workflow import workflow_to_document
from steps.respond import respond_warnings


@post("/", status_code=201, summary="Register a workflow (the next revision of its name)")
async def register_workflow(
    request: Request[Any, Any, Any], data: JSONBody[dict[str, Any]], services: ServicesDep
) -> WorkflowRegisteredView:
    """The body is the workflow definition; every problem is listed at once (422)."""
    del data  # the schema is documented from it; the definition is read as written
    source = await request.body()
    client = services.client
    workflow = Client.validate_workflow(source)
    warnings: list[str] = []
    try:
        previous = await client.get_workflow(workflow.name)
    except WorkflowNotFoundError:
        previous = None
    revision = await client.register_workflow(workflow)
    if previous is not None and codec.encode(previous) == codec.encode(workflow):
        warnings.append(
            f"workflow {workflow.name!r} is unchanged from revision {revision - 1}: "
            "registered again as the same definition"
        )
    warnings += respond_warnings(workflow)  # an http trigger and no or two respond steps
    return WorkflowRegisteredView(name=workflow.name, revision=revision, warnings=warnings)


@get("/", summary="List registered workflows")
async def list_workflows(services: ServicesDep) -> WorkflowListView:
    return WorkflowListView(workflows=await services.client.list_workflows())


@get("/{name:str}", summary="Show a workflow (the latest revision unless ?revision=)")
async def show_workflow(
    name: FromPath[str],
    services: ServicesDep,
    revision: int | None = Parameter(default=None, ge=1, description="A past revision."),
) -> WorkflowView:
    client = services.client
    workflow = await client.get_workflow(name, revision)
    revisions = await client.workflow_revisions(name)
    shown = revision if revision is not None else (revisions[-1] if revisions else 1)
    return WorkflowView(
        name=workflow.name, revision=shown, revisions=revisions,
        workflow=workflow_to_document(workflow),
    )  # fmt: skip


@post("/validate", status_code=200, summary="Validate a workflow offline (every problem)")
async def validate_workflow(
    request: Request[Any, Any, Any], data: JSONBody[dict[str, Any]]
) -> ValidationView:
    """Nothing is stored; `valid` says whether the definition keeps every rule."""
    del data
    try:
        workflow = Client.validate_workflow(await request.body())
    except WorkflowInvalidError as error:
        problems = [{"path": p.path, "value": p.value, "rule": p.rule} for p in error.problems]
        name = error.workflow or None
        return ValidationView(valid=False, name=name, steps=0, problems=problems)
    return ValidationView(valid=True, name=workflow.name, steps=len(workflow.steps), problems=[])


router = Router(
    path="/v1/workflows",
    route_handlers=[register_workflow, list_workflows, validate_workflow, show_workflow],
    tags=["workflows"],
)
