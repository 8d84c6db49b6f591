"""`GET /v1/runs/{run_id}/live`: a run's live model text as Server-Sent Events.

While an agent turn's model call streams, the worker publishes the text on core NATS
(`dagnats.live.<run>.<step>`, dagnats/llm/live.py): ephemeral, never in history. This route
subscribes for the run and forwards each chunk as one event: `event: text` (data: the chunk as
JSON, `{"step", "turn", "attempt", "seq", "text"}`) and `event: turn_end` when a model call
ends; `event: end` (data: the run's status) when the run ends, and the stream closes. A stream
lasts at most `sse_stream_s_max` (then reconnect); what was streamed before the client came is
not replayed (history has each finished turn). A client that reads too slowly loses chunks
past `live_queue_chunks_max`, never the engine's time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any, Final

import msgspec
from litestar import get
from litestar.response import ServerSentEvent, ServerSentEventMessage

from dagnats.api import limits as api_limits
from dagnats.api.routes_runs import RunId
from dagnats.api.services import Services, ServicesDep
from dagnats.client import WaitTimeoutError
from dagnats.llm.live import LiveChunk, follow_live
from kernel.state import is_terminal

live_queue_chunks_max: Final = 1_024  # chunks held for one slow SSE client (then dropped)
_END: Final = object()


@get(
    "/v1/runs/{run_id:str}/live",
    summary="A run's live model text, as Server-Sent Events (not stored; see /events)",
    response_description="text/event-stream: `text`, `turn_end`, then `end` with the status",
    tags=["runs"],
)
async def live_text(run_id: RunId, services: ServicesDep) -> ServerSentEvent:
    """Each streamed piece of a model's answer while the run runs; ends with the run."""
    state = await services.client.get_run(run_id)  # 404 before the stream starts
    if is_terminal(state):
        return ServerSentEvent(_ended(state.status))
    return ServerSentEvent(_live(services, run_id))


async def _ended(status: str) -> AsyncGenerator[ServerSentEventMessage, None]:
    yield ServerSentEventMessage(data=status, event="end")


async def _live(services: Services, run_id: str) -> AsyncGenerator[ServerSentEventMessage, None]:
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=live_queue_chunks_max)

    def take(chunk: LiveChunk) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(chunk)

    async def until_end() -> None:
        with contextlib.suppress(WaitTimeoutError):
            state = await services.client.wait(run_id, timeout_s=api_limits.sse_stream_s_max)
            await queue.put((_END, state.status))
            return
        await queue.put((_END, ""))

    nc = services.client.connection.nc
    async with follow_live(nc, run_id, take):
        ender = asyncio.create_task(until_end())
        try:
            while True:
                item = await queue.get()
                if isinstance(item, tuple) and item[0] is _END:
                    if item[1]:
                        yield ServerSentEventMessage(data=item[1], event="end")
                    return
                chunk: LiveChunk = item
                data = msgspec.json.encode(chunk).decode()
                yield ServerSentEventMessage(data=data, event="turn_end" if chunk.end else "text")
        finally:
            ender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await ender
