"""A run id used again after its run was deleted (`dagnats run delete`): the new run starts,
its tasks reach a worker and it completes, within every duplicate window (the start command's,
the history appends', the tasks', the results'; the worker that ran the first run's tasks runs
the new run's), against a real `dagnats serve` and a real worker process. The first run's
ended-run marker goes with it (else a new task that waited would be skipped as of an ended
run: dagnats/runtime/ended_runs.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from dagnats.client.errors import RunNotFoundError
from dagnats.runtime.clock import now_ms
from dagnats.runtime.ended_runs import EndedRuns
from dagnats.runtime.resources import COMMANDS_STREAM, SCHEDULE_PREFIX
from dagnats.runtime.timers import JetStreamTimers
from kernel.codec import decode_decision
from kernel.commands import CompleteTask, FailTask, TaskStarted
from kernel.effects import life_tag
from tests.fault_support import Processes, connected, workflow
from tests.nats_fixtures import wait_for
from tests.test_lifecycle_e2e import cli_json, wait_status

STEPS: list[dict[str, Any]] = [
    {"id": "first", "task": "fault.work"},
    {"id": "second", "task": "fault.work", "depends_on": ["first"]},
]


async def _schedules(js: JetStreamContext, run_id: str) -> int:
    """The run's armed timers (message schedules in the commands stream)."""
    subject = f"{SCHEDULE_PREFIX}.{run_id}.>"
    info = await js.stream_info(COMMANDS_STREAM, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def test_a_deleted_runs_id_starts_a_new_run_that_completes(
    procs: Processes, tmp_path: Path
) -> None:
    serve = await procs.serve(tmp_path / "data", http=None)
    procs.cli_worker(serve.url)
    async with connected(serve.url) as client, connected(serve.url, "worker") as worker:
        await client.register_workflow(workflow("twice", STEPS))
        run_id = await client.start("twice", {"n": 1}, run_id="order-7")
        await wait_status(client, run_id, "completed")
        first_history = [item async for item in client.history_bytes(run_id)]
        markers = EndedRuns(worker.connection.js)  # (what a worker reads)

        async def marked() -> bool:
            return await markers.ended(run_id) is not None

        await wait_for(marked, timeout_ms=15_000, what="the ended-run marker")
        async with connected(serve.url, "admin") as admin:  # a timer left armed (a crash)
            timers = JetStreamTimers(admin.connection.js)
            await timers.arm(run_id, "leftover", now_ms() + 3_600_000, b"{}")
            assert await _schedules(admin.connection.js, run_id) == 1

        cli_json(procs, "run", "delete", run_id, "--nats-url", serve.url)
        with pytest.raises(RunNotFoundError):
            await client.get_run(run_id)
        assert await markers.ended(run_id) is None
        async with connected(serve.url, "admin") as admin:
            assert await _schedules(admin.connection.js, run_id) == 0

        again = await client.start("twice", {"n": 1}, run_id="order-7")
        assert again == run_id
        await wait_status(client, run_id, "completed")
        history = [item async for item in client.history_bytes(run_id)]
        assert len(history) == len(first_history)
        assert min(seq for seq, _ in history) > max(seq for seq, _ in first_history)
        # Its results carry its life's tag (a result of the first life would decide nothing).
        state = await client.get_run(run_id)
        lives = {
            decision.command.life
            async for _, decision in client.history(run_id)
            if isinstance(decision.command, CompleteTask | TaskStarted | FailTask)
        }
        assert lives == {life_tag(state.seed)}, lives
        first_lives = {
            decode_decision(data).command.seed for _, data in first_history[:1]
        }
        assert {life_tag(seed) for seed in first_lives} != lives
