"""`/v1/dead-letters`, `/v1/runs/{id}/retry|rerun|terminate`, `/v1/workers`: run lifecycle
operations over HTTP, one-to-one with `dagnats dlq list|show|retry|discard`, `dagnats run
retry|rerun|terminate` and `dagnats workers list` (dagnats/client/lifecycle.py).

What the run's rules refuse (retry a completed run, discard a dead letter twice) is 409 with
the kernel's own reason; a dead letter a run does not have is 404.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Router, get, post
from litestar.params import FromPath, FromQuery, JSONBody, Parameter

from dagnats.api.problems import ProblemError
from dagnats.api.services import Services, ServicesDep
from dagnats.client import RunNotFoundError
from dagnats.client import lifecycle as client_lifecycle
from dagnats.runtime.workers_directory import WorkerEntry
from kernel.errors import DagnatsError
from kernel.reopen import DeadLetter

dead_letters_listed_max = 10_000


class WorkersView(msgspec.Struct, frozen=True, kw_only=True):
    workers: list[WorkerEntry]


class DeadLettersView(msgspec.Struct, frozen=True, kw_only=True):
    dead_letters: list[DeadLetter]


class ReasonBody(msgspec.Struct, frozen=True, kw_only=True):
    reason: str = ""


class RetryBody(msgspec.Struct, frozen=True, kw_only=True):
    from_step: str = ""  # "" : from the failed step(s)
    reason: str = ""


class LifecycleView(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    status: str


class RerunView(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str  # the new run
    rerun_of: str


def _conflict(error: client_lifecycle.LifecycleRejectedError) -> ProblemError:
    return ProblemError(409, str(error), kind="lifecycle-rejected",
                        hint="see the run with GET /v1/runs/{run_id}")  # fmt: skip


@get("/v1/workers", summary="List the live workers (task types, groups, load)", tags=["workers"])
async def list_workers(services: ServicesDep, stale: FromQuery[bool] = False) -> WorkersView:
    """Workers whose last heartbeat is recent (`stale=true`: also those that stopped lately)."""
    entries = await client_lifecycle.list_workers(services.client, include_stale=stale)
    return WorkersView(workers=entries)


@get("/", summary="List dead letters (steps that failed for good), newest first")
async def list_dead_letters(
    services: ServicesDep,
    workflow: FromQuery[str | None] = None,
    limit: Annotated[int, Parameter(ge=1, le=dead_letters_listed_max)] = 100,
) -> DeadLettersView:
    letters = await client_lifecycle.list_dead_letters(
        services.client, workflow=workflow, limit=limit
    )
    return DeadLettersView(dead_letters=letters)


async def _letter(services: Services, run_id: str, step_id: str) -> DeadLetter:
    try:
        return await client_lifecycle.dead_letter(services.client, run_id, step_id)
    except RunNotFoundError:
        raise
    except DagnatsError as error:
        raise ProblemError(404, str(error), kind="dead-letter-not-found",
                           hint="list them with GET /v1/dead-letters") from None  # fmt: skip


@get("/{run_id:str}/{step_id:str}", summary="Show one dead letter (its exact task input)")
async def show_dead_letter(
    run_id: FromPath[str], step_id: FromPath[str], services: ServicesDep
) -> DeadLetter:
    return await _letter(services, run_id, step_id)


@post("/{run_id:str}/{step_id:str}/retry", status_code=200, summary="Retry a dead letter")
async def retry_dead_letter(
    run_id: FromPath[str], step_id: FromPath[str], services: ServicesDep,
    data: JSONBody[ReasonBody | None] = None,
) -> LifecycleView:
    """Reopens its run in place from its step (the run goes on)."""
    await _letter(services, run_id, step_id)
    return await _retry(services, run_id, step_id, data.reason if data else "")


@post("/{run_id:str}/{step_id:str}/discard", status_code=200, summary="Discard a dead letter")
async def discard_dead_letter(
    run_id: FromPath[str], step_id: FromPath[str], services: ServicesDep,
    data: JSONBody[ReasonBody | None] = None,
) -> DeadLetter:
    await _letter(services, run_id, step_id)
    try:
        return await client_lifecycle.discard(
            services.client, run_id, step_id, reason=data.reason if data else ""
        )
    except client_lifecycle.LifecycleRejectedError as error:
        raise _conflict(error) from None


async def _retry(services: Services, run_id: str, from_step: str, reason: str) -> LifecycleView:
    try:
        state = await client_lifecycle.retry(
            services.client, run_id, from_step=from_step, reason=reason
        )
    except client_lifecycle.LifecycleRejectedError as error:
        raise _conflict(error) from None
    return LifecycleView(run_id=run_id, status=state.status)


@post("/{run_id:str}/retry", status_code=200, summary="Retry a failed or cancelled run in place")
async def retry_run(
    run_id: FromPath[str], services: ServicesDep, data: JSONBody[RetryBody | None] = None
) -> LifecycleView:
    """From the failed step (or `from_step` and what depends on it), keeping earlier outputs."""
    body = data or RetryBody()
    return await _retry(services, run_id, body.from_step, body.reason)


@post("/{run_id:str}/rerun", status_code=201, summary="Start a new run with the same input")
async def rerun_run(run_id: FromPath[str], services: ServicesDep) -> RerunView:
    new_run_id = await client_lifecycle.rerun(services.client, run_id)
    return RerunView(run_id=new_run_id, rerun_of=run_id)


@post("/{run_id:str}/terminate", status_code=202, summary="End a run at once, no compensation")
async def terminate_run(
    run_id: FromPath[str], data: JSONBody[ReasonBody], services: ServicesDep
) -> LifecycleView:
    if not data.reason.strip():
        raise ProblemError(400, "reason is empty: say why the run is terminated",
                           kind="validation", field="reason")  # fmt: skip
    await client_lifecycle.terminate(services.client, run_id, data.reason)
    return LifecycleView(run_id=run_id, status="terminating")


dead_letters_router = Router(
    path="/v1/dead-letters",
    route_handlers=[list_dead_letters, show_dead_letter, retry_dead_letter, discard_dead_letter],
    tags=["dead letters"],
)
runs_lifecycle_router = Router(
    path="/v1/runs", route_handlers=[retry_run, rerun_run, terminate_run], tags=["runs"]
)
router = Router(
    path="/", route_handlers=[list_workers, dead_letters_router, runs_lifecycle_router]
)
