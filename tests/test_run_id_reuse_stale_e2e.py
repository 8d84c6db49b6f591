"""A run id used again (`dagnats run delete`, then a start under the same id, at once):
what the first run (its first life) sent must not act on the new one, and what the new one
sends must not be dropped as a copy of the first one's (JetStream's duplicate windows):
a late result of the first life, its sub_workflow child's start and report, a gate's slot,
a cancel. Real `dagnats serve` (with its roles, so results carry task tokens) and a real
worker process (tests/fault_workers.py); nothing mocked, every wait bounded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dagnats.client.errors import RunNotFoundError
from dagnats.runtime.resources import COMMANDS_STREAM, ENGINE_CONSUMER
from kernel.events import StepCompleted, StepScheduled
from tests.fault_support import Processes, connected, decisions_of, events_of, workflow
from tests.nats_fixtures import wait_for
from tests.test_lifecycle_e2e import cli_json, wait_status

RUN_ID = "order-9"
wait_ms = 20_000


def _steps(gate: str) -> list[dict[str, Any]]:
    return [{"id": "only", "task": "fault.work", "metadata": {"gate": gate}}]


async def test_a_late_result_of_a_deleted_run_does_not_complete_its_ids_new_run(
    procs: Processes, tmp_path: Path
) -> None:
    serve = await procs.serve(tmp_path / "data", http=None)
    procs.cli_worker(serve.url)
    async with connected(serve.url) as client, connected(serve.url, "admin") as admin:
        await client.register_workflow(workflow("stale", _steps("old-life")))
        await client.start("stale", {"n": 1}, run_id=RUN_ID)

        def calls(count: int) -> bool:
            return len(procs.calls_of(RUN_ID, "only")) >= count

        await wait_for(lambda: calls(1), timeout_ms=wait_ms, what="the first life's handler")
        await client.cancel(RUN_ID, "to be deleted and started again")
        await wait_status(client, RUN_ID, "cancelled")
        cli_json(procs, "run", "delete", RUN_ID, "--nats-url", serve.url)

        # The new life's handler blocks on a gate never opened: it sends no result.
        await client.register_workflow(workflow("stale", _steps("new-life")))
        await client.start("stale", {"n": 1}, run_id=RUN_ID)
        await wait_for(lambda: calls(2), timeout_ms=wait_ms, what="the new life's handler")

        js = admin.connection.js
        before = (await js.stream_info(COMMANDS_STREAM)).state.last_seq
        procs.open_gate("old-life")  # the first life's handler returns now, late

        async def handled() -> bool:  # its result stored, and the engine acked every command
            stored = (await js.stream_info(COMMANDS_STREAM)).state.last_seq > before
            info = await js.consumer_info(COMMANDS_STREAM, ENGINE_CONSUMER)
            return stored and info.num_pending == 0 and info.num_ack_pending == 0

        await wait_for(handled, timeout_ms=wait_ms, what="the late result to be handled")
        events = events_of(await decisions_of(client, RUN_ID))
        completed = [e for e in events if isinstance(e, StepCompleted)]
        assert completed == [], f"the new life took the old life's result: {completed}"
        assert (await client.get_run(RUN_ID)).status == "running"


async def test_a_deleted_parents_id_started_again_runs_its_sub_workflow_again(
    procs: Processes, tmp_path: Path
) -> None:
    """The parent and its child deleted, the parent's id started again at once: its
    sub_workflow step starts the child (the same derived id, `<run>-<step>-<attempt>`) again
    and the new parent completes."""
    serve = await procs.serve(tmp_path / "data", http=None)
    procs.cli_worker(serve.url)
    parent_steps = [{"id": "sub", "type": "sub_workflow", "config": {"workflow": "kid"}}]
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("kid", [{"id": "k", "task": "fault.work"}]))
        await client.register_workflow(workflow("parent", parent_steps))
        await client.start("parent", {"n": 1}, run_id="order8")
        await wait_status(client, "order8", "completed")
        child = "order8-sub-1"
        assert (await client.get_run(child)).status == "completed"
        for run_id in (child, "order8"):
            cli_json(procs, "run", "delete", run_id, "--nats-url", serve.url)

        await client.start("parent", {"n": 1}, run_id="order8")

        async def child_started() -> bool:
            try:
                await client.get_run(child)
            except RunNotFoundError:
                return False
            return True

        await wait_for(child_started, timeout_ms=wait_ms, what="the new parent's child")
        await wait_status(client, "order8", "completed")
        assert (await client.get_run(child)).status == "completed"


async def test_a_deleted_runs_id_started_again_waits_for_its_gates_slot(
    procs: Processes, tmp_path: Path
) -> None:
    """A gated workflow (`max_runs: 1`): its one slot held by another run, a deleted run's id
    started again (the engine still holding the deleted run's state) waits `pending`."""
    serve = await procs.serve(tmp_path / "data", http=None)
    procs.cli_worker(serve.url)
    steps = [{"id": "only", "task": "fault.work", "metadata": {"gate": "hold"}}]
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("one", steps, concurrency={"max_runs": 1}))
        await client.start("one", {"n": 1}, run_id="gated7")
        await wait_status(client, "gated7", "running")
        await client.cancel("gated7", "to be deleted and started again")
        await wait_status(client, "gated7", "cancelled")
        holder = await client.start("one", {"n": 2}, run_id="holder7")
        await wait_for(
            lambda: len(procs.calls_of(holder, "only")) == 1, timeout_ms=wait_ms,
            what="the holder's handler",
        )  # fmt: skip
        cli_json(procs, "run", "delete", "gated7", "--nats-url", serve.url)

        await client.start("one", {"n": 1}, run_id="gated7")
        events = events_of(await decisions_of(client, "gated7"))  # (its first decision)
        assert not any(isinstance(e, StepScheduled) for e in events), (
            f"the new gated7 started past the gate's one slot (held by {holder}): {events}"
        )
        await wait_status(client, "gated7", "pending")


async def test_a_deleted_runs_id_started_again_can_be_cancelled_again(
    procs: Processes, tmp_path: Path
) -> None:
    """The first run cancelled (`client.cancel`), deleted, its id started again at once: a
    cancel of the new run is not dropped as a copy of the first run's cancel."""
    serve = await procs.serve(tmp_path / "data", http=None)
    procs.cli_worker(serve.url)
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("held", _steps("never")))
        for life in ("first", "second"):
            await client.start("held", {"n": 1}, run_id="order10")
            await wait_status(client, "order10", "running")
            await client.cancel("order10", f"the {life} run is cancelled")
            await wait_status(client, "order10", "cancelled")
            cli_json(procs, "run", "delete", "order10", "--nats-url", serve.url)
