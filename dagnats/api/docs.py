"""`GET /openapi.json`, `/health`, `/ready` and the offline docs page (`/docs`).

The docs page is two files shipped in the wheel (`dagnats/api/static/docs.html`,
`docs.js`): no CDN, it works offline; it reads `/openapi.json` and sends requests with the
bearer token the reader types (kept in the browser tab only). `/health` says whether NATS and
JetStream answer and the engine consumes (503 otherwise); `/ready` whether serve finished
starting. These handlers are in the OpenAPI document except the docs page and the document.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any, Final

import msgspec
from litestar import Request, Response, get

from dagnats.api.problems import PROBLEM_MEDIA_TYPE, Problem
from dagnats.api.services import ServicesDep
from dagnats.api.views import HealthView, ReadyView
from dagnats.runtime.resources import HISTORY_STREAM

health_probe_s: Final = 2.0
STATIC_FILES: Final = {"docs.html": "text/html; charset=utf-8", "docs.js": "text/javascript"}


def static_file(name: str) -> bytes:
    return resources.files("dagnats.api").joinpath("static", name).read_bytes()


@get("/openapi.json", include_in_schema=False, media_type="application/json")
async def openapi_document(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """The generated document, with the problem+json error responses of every operation."""
    document = with_problems(request.app.openapi_schema.to_schema())
    return Response(document, media_type="application/json")


def with_problems(document: dict[str, Any]) -> dict[str, Any]:
    """`document` with the `Problem` schema and `4XX`/`5XX` problem responses on every
    operation (the statuses each route answers are listed in README "HTTP API")."""
    (schema,), components = msgspec.json.schema_components(
        [Problem], ref_template="#/components/schemas/{name}"
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(components)
    content = {PROBLEM_MEDIA_TYPE: {"schema": schema}}
    for methods in document.get("paths", {}).values():
        for operation in methods.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            responses.setdefault("4XX", {"description": "A problem (RFC 9457)", "content": content})
            responses.setdefault("5XX", {"description": "A problem (RFC 9457)", "content": content})
    return document


@get("/docs", include_in_schema=False, media_type="text/html")
async def docs_page() -> Response[bytes]:
    return Response(static_file("docs.html"), media_type=STATIC_FILES["docs.html"])


@get("/docs/docs.js", include_in_schema=False)
async def docs_script() -> Response[bytes]:
    return Response(static_file("docs.js"), media_type=STATIC_FILES["docs.js"])


@get("/health", summary="NATS, JetStream and the engine", tags=["health"])
async def health(services: ServicesDep) -> Response[HealthView]:
    """200 when NATS and JetStream answer and the engine consumes; 503 otherwise. Needs no
    token."""
    nats_ok = services.client.connection.nc.is_connected
    jetstream_ok = False
    if nats_ok:
        try:
            await asyncio.wait_for(services.js.stream_info(HISTORY_STREAM), health_probe_s)
            jetstream_ok = True
        except Exception:  # no answer, or no history stream: not healthy either way
            jetstream_ok = False
    engine_ok = services.engine_running()
    healthy = nats_ok and jetstream_ok and engine_ok
    view = HealthView(
        status="ok" if healthy else "unavailable", nats=nats_ok, jetstream=jetstream_ok,
        engine=engine_ok,
    )  # fmt: skip
    return Response(view, status_code=200 if healthy else 503)


@get("/ready", summary="Whether serve finished starting", tags=["health"])
async def ready(services: ServicesDep) -> Response[ReadyView]:
    is_ready = services.ready()
    return Response(ReadyView(ready=is_ready), status_code=200 if is_ready else 503)


HANDLERS: Final = (openapi_document, docs_page, docs_script, health, ready)
