"""`GET /v1/runs/{id}/live`: a run's live model text over HTTP as Server-Sent Events, on a real
embedded nats-server and the real HTTP server (uvicorn) in this loop, the fake model server
streaming a turn's answer in pieces: the client sees each piece (`text`), the call's end
(`turn_end`) and the run's end (`end`); an unknown run is a 404 problem; an ended run's stream
says `end` at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import msgspec

from dagnats import Worker
from dagnats.api.app import create_app
from dagnats.api.server import HttpServer
from dagnats.api.services import Services
from dagnats.llm import agent_turn
from dagnats.runtime.serve import local_stack
from kernel.workflow.builder import Workflow
from tests.fake_model import fake_server, model_for

ANSWER = "Streaming, piece by piece, over HTTP."
SCRIPT: dict[str, Any] = {"agents": [{"match": "", "replies": [
    {"text": ANSWER, "pieces": 5, "chunk_delay_ms": 30, "delay_ms": 600},
]}]}  # fmt: skip
READ_S = 30.0


async def read_events(response: httpx.Response) -> list[tuple[str, str]]:
    """(event, data) of each SSE event until the stream closes."""
    events: list[tuple[str, str]] = []
    event, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data = line.removeprefix("data:").strip()
        elif line == "" and data:
            events.append((event, data))
            event, data = "message", ""
    return events


async def test_the_live_text_of_a_run_streams_over_http_and_ends_with_the_run(
    tmp_path: Path,
) -> None:
    workflow = Workflow("live_sse").step(
        "agent", type="agent_loop", task="agent.turn", config={"max_turns": 2}
    ).build()  # fmt: skip
    async with fake_server(SCRIPT) as model_server:
        worker = Worker(concurrency=4, heartbeat_interval_ms=500)
        worker.add("agent.turn", agent_turn(model=model_for("openai", model_server.url)))
        async with local_stack(tmp_path / "data", worker) as (info, client):
            app = create_app(Services(client, url=info.nats_url, data_dir=None))
            http = HttpServer(app, "127.0.0.1", 0)
            url = await http.start()
            try:
                async with httpx.AsyncClient(base_url=url, timeout=READ_S) as web:
                    missing = await web.get("/v1/runs/no-such-run/live")
                    assert missing.status_code == 404
                    assert missing.headers["content-type"].startswith("application/problem+json")
                    await client.start(workflow, "say it", run_id="live-1")
                    async with web.stream("GET", "/v1/runs/live-1/live") as response:
                        assert response.status_code == 200
                        assert response.headers["content-type"].startswith("text/event-stream")
                        events = await read_events(response)
                    again = await web.get("/v1/runs/live-1/live")
            finally:
                await http.stop()
    texts = [msgspec.json.decode(data) for kind, data in events if kind == "text"]
    assert "".join(t["text"] for t in texts) == ANSWER and len(texts) == 5
    assert {(t["step"], t["turn"]) for t in texts} == {("agent.turn1", 1)}
    assert [kind for kind, _ in events][-2:] == ["turn_end", "end"]
    assert events[-1] == ("end", "completed")
    assert "event: end" in again.text and "data: completed" in again.text
