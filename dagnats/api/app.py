"""`create_app(services, extra_route_handlers=...)`: the HTTP API as a Litestar app.

The REST routers (`routes_workflows`, `routes_runs`, `routes_approvals`), health, OpenAPI
and the docs page (`docs`), plus whatever the caller adds (the HTTP worker bridge's router,
`dagnats/api/bridge.py`, mounted under `/v1/tasks`). Every handler may ask for `services`
(the `Services` given here). Every error is a problem+json body (`problems`); bodies over
`limits.request_body_bytes_max` are 413; with a token, the bearer guard (`auth`) is in front
of every route but `/health` and the docs page.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.types import ControllerRouterHandler

from dagnats.api import (
    docs,
    routes_approvals,
    routes_lifecycle,
    routes_live,
    routes_runs,
    routes_workflows,
)
from dagnats.api import limits as api_limits
from dagnats.api.auth import BearerGuard
from dagnats.api.problems import problem_handlers
from dagnats.api.services import Services

API_TITLE: Final = "DagNats HTTP API"
API_VERSION: Final = "1.0.0"


def create_app(
    services: Services,
    *,
    token: str | None = None,
    extra_route_handlers: Sequence[ControllerRouterHandler] = (),
) -> Litestar:
    """The app serving `services`; `token` turns the bearer guard on.

    Args:
        extra_route_handlers: more routers or handlers (the bridge's), mounted as given.
    """

    def provide_services() -> Services:
        return services

    handlers: list[ControllerRouterHandler] = [
        *docs.HANDLERS,
        routes_workflows.router,
        routes_runs.router,
        routes_approvals.approvals_router,
        routes_approvals.publish_event,
        routes_approvals.query,
        routes_live.live_text,
        routes_lifecycle.router,  # workers, dead letters, retry/rerun/terminate
        *extra_route_handlers,
    ]
    return Litestar(
        route_handlers=handlers,
        dependencies={"services": Provide(provide_services, sync_to_thread=False)},
        exception_handlers=problem_handlers(),
        middleware=[BearerGuard(token)] if token is not None else [],
        request_max_body_size=api_limits.request_body_bytes_max,
        openapi_config=OpenAPIConfig(
            title=API_TITLE,
            version=API_VERSION,
            description="Drive DagNats over HTTP: workflows, runs, approvals, events, query. "
            "Errors are RFC 9457 problem details (application/problem+json).",
            path="/schema",
            render_plugins=[],
        ),
        logging_config=None,
        debug=False,
    )
