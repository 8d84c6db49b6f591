"""Handlers of the `http_echo` example (examples/http_echo/workflow.json): an HTTP endpoint.

`POST /hooks/echo` with `{"message": "..."}` starts a run whose input is the request;
`echo.validate` checks the body (no message: the run fails and the caller gets 500
`workflow_failed`), the `respond` step answers 201 with what validate returned, and the run
goes on to `echo.slow` (the caller has its answer already). Run them with
`dagnats worker examples.http_echo.worker:worker`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from dagnats import NonRetryableError, TaskContext, Worker

SLOW_S: Final = 2.0
MESSAGE_CHARS_MAX: Final = 1_000

worker = Worker(concurrency=8)


@worker.task("echo.validate")
async def validate(ctx: TaskContext) -> dict[str, Any]:
    request = ctx.input
    body = request.get("body")
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, str) or not 0 < len(message) <= MESSAGE_CHARS_MAX:
        raise NonRetryableError(
            f"body.message must be a string of 1..{MESSAGE_CHARS_MAX} characters"
        )
    return {"echo": message, "method": request.get("method"), "query": request.get("query")}


@worker.task("echo.slow")
async def slow(ctx: TaskContext) -> dict[str, Any]:
    await asyncio.sleep(SLOW_S)  # the caller was answered by the respond step before this
    return {"done": ctx.input.get("echo")}
