"""End to end on a real embedded nats-server: an endless agent that continues as new every two
turns, until its carried state says it is done. One process: server, engine, worker, client
(as in tests/test_dynamic_e2e.py); waits are bounded."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import msgspec

from dagnats import Client, Continue, Done, TaskContext, ToolCall, Worker
from dagnats.runtime.serve import Server
from kernel.workflow.builder import Workflow

WAIT_S = 60.0


async def test_an_agent_continues_as_new_every_two_turns_and_carries_its_state(
    tmp_path: Path,
) -> None:
    seen: list[tuple[str, int, Any, list[Any]]] = []
    worker = Worker(concurrency=8, heartbeat_interval_ms=500)

    @worker.task("count.turn")
    async def turn(ctx: TaskContext) -> Continue | Done:
        results = [r.output for r in ctx.tool_results]
        seen.append((ctx.run_id, ctx.turn, ctx.state, results))
        count = (ctx.state or {"count": 0})["count"] + sum(results)
        if count >= 5:
            return Done({"count": count, "goal": ctx.input["goal"]})
        return Continue({"count": count}, [ToolCall("one", {})], tokens_in=1)

    @worker.task("count.one")
    async def one(ctx: TaskContext) -> int:
        return 1

    workflow = (
        Workflow("counter")
        .step(
            "a",
            type="agent_loop",
            task="count.turn",
            config={
                "continue_as_new_after_turns": 2,
                "max_turns": 3,
                "tools": {"one": "count.one"},
            },
        )
        .build()
    )
    server = Server(tmp_path / "data")
    info = await server.start()
    stop = asyncio.Event()
    worker_client = await Client.connect(info.nats_url, role="worker")
    connection = worker_client.connection
    engine = asyncio.create_task(server.run(stop))
    serving = asyncio.create_task(
        worker.serve(connection.tasks, connection.commands, connection.commands, stop)
    )
    client = await Client.connect(info.nats_url)
    try:
        run_id = await client.start(workflow, {"goal": "five"})
        final = await client.wait(run_id, timeout_s=WAIT_S, follow=True)
    finally:
        stop.set()
        for task in (serving, engine):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=10)
        await client.close()
        await worker_client.close()
        await server.stop()
    assert final.status == "completed", final.error
    assert msgspec.json.decode(bytes(final.output)) == {"count": 5, "goal": "five"}
    runs = list(dict.fromkeys(run for run, _, _, _ in seen))
    assert len(runs) == 3 and runs[0] == run_id, runs
    # Each run takes two turns; a fresh run's turn 1 sees the carried state and tool results.
    assert [(runs.index(run), t) for run, t, _, _ in seen] == [
        (0, 1),
        (0, 2),
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
    ]
    assert seen[2][2:] == ({"count": 1}, [1]) and seen[4][2:] == ({"count": 3}, [1])
