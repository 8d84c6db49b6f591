"""Workers may take tasks of their types and report only tasks they were given.

Against the real embedded server with its generated credentials: a worker credential scoped
to some task types is refused BY THE SERVER when it reaches for another type's consumer (or
tries to create its own consumer over another type's subject); and the engine sets aside a
result that does not carry the token of the task it reports (runtime/task_tokens), so a
worker cannot make up the result of an attempt it never took.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from dagnats import Workflow
from dagnats.client import Client
from dagnats.runtime import credentials
from dagnats.runtime.resources import (
    TASKS_STREAM,
    task_consumer_name,
    task_subject,
)
from dagnats.runtime.serve import Server
from dagnats.worker import TaskContext, Worker
from kernel import codec
from kernel.commands import CompleteTask
from tests.fault_support import read_dead
from tests.nats_fixtures import wait_for
from tests.test_roles_nats import API, WAIT_MS, connected_as, serving

OWN = "scoped.own"
OTHER = "scoped.other"


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """serve's parts in this process, with one more worker credential scoped to OWN."""
    data_dir = tmp_path / "data"
    credentials.add_worker(data_dir, "own", [OWN])
    async with serving(data_dir) as the_server:
        yield the_server


def scoped_path(server: Server) -> Path:
    return server.data_dir / "credentials" / "worker-own.json"


def one_step(name: str, task_type: str) -> Any:
    return Workflow(name).task("a", task=task_type).build()


async def test_a_scoped_worker_may_reach_only_its_own_task_types(server: Server) -> None:
    own, other = task_consumer_name(OWN), task_consumer_name(OTHER)
    async with connected_as(server, "worker-own") as worker:
        await worker.refused(f"{API}.CONSUMER.MSG.NEXT.{TASKS_STREAM}.{other}")
        await worker.refused(f"{API}.CONSUMER.INFO.{TASKS_STREAM}.{other}")
        # its own consumer's name, but over another type's subject: refused too
        await worker.refused(f"{API}.CONSUMER.CREATE.{TASKS_STREAM}.{own}.{task_subject(OTHER)}")
        await worker.refused(f"{API}.CONSUMER.DURABLE.CREATE.{TASKS_STREAM}.{own}")
        await worker.refused(f"{API}.STREAM.MSG.GET.{TASKS_STREAM}")
        await worker.allowed(f"{API}.CONSUMER.INFO.{TASKS_STREAM}.{own}")


async def test_a_scoped_worker_serves_its_type_end_to_end(server: Server) -> None:
    worker = Worker()
    seen: list[str] = []

    @worker.task(OWN)
    async def own(ctx: TaskContext) -> Any:
        seen.append(ctx.step_id)
        return {"ok": True}

    stop = asyncio.Event()
    async with await Client.connect(server.url, creds=scoped_path(server)) as scoped:
        assert scoped.connection.role == "worker"
        connection = scoped.connection
        serving = asyncio.create_task(
            worker.serve(connection.tasks, connection.commands, connection.commands, stop)
        )
        try:
            async with await Client.connect(server.url) as client:
                await client.register_workflow(one_step("own-flow", OWN))
                run_id = await client.start("own-flow", {})
                state = await client.wait(run_id, timeout_s=WAIT_MS / 1000)
        finally:
            stop.set()
            await asyncio.wait_for(serving, timeout=10)
    assert state.status == "completed", state
    assert seen == ["a"]


async def test_a_result_without_its_tasks_token_is_set_aside(server: Server) -> None:
    async with (
        await Client.connect(server.url) as client,
        await Client.connect(server.url, role="worker") as worker,
    ):
        await client.register_workflow(one_step("tokened", OWN))
        run_id = await client.start("tokened", {})
        result = CompleteTask(
            run_id=run_id, at_ms=1, seed=1, step_id="a", attempt=1,
            output=msgspec.Raw(b'{"made": "up"}'),
        )  # fmt: skip
        payload = codec.encode(result)
        commands = worker.connection.commands
        js = client.connection.js

        async def forbidden_letters() -> int:
            letters = await read_dead(js)
            return sum(1 for x in letters if x.subject.endswith(".forbidden") and
                       run_id in x.reason)  # fmt: skip

        # Made up (no token), then with a wrong token: both set aside, the run waits on.
        await commands.publish_command(run_id, payload, "made-up-1")
        await wait_for(lambda: _at_least(forbidden_letters, 1), timeout_ms=WAIT_MS,
                       what="the made-up result set aside")  # fmt: skip
        await commands.publish_command(run_id, payload, "made-up-2", token="0" * 32)
        await wait_for(lambda: _at_least(forbidden_letters, 2), timeout_ms=WAIT_MS,
                       what="the wrongly tokened result set aside")  # fmt: skip
        assert (await client.get_run(run_id)).status == "running"
        letters = [x for x in await read_dead(js) if x.subject.endswith(".forbidden")]
        assert "carries no task token" in letters[0].reason, letters[0].reason
        assert "another task's token" in letters[1].reason, letters[1].reason

        # Taken as a worker takes it: the task message carries the engine's token.
        taken: list[Any] = []

        async def fetched() -> bool:
            taken.extend(await worker.connection.tasks.fetch(OWN, batch=1, timeout_ms=200))
            return bool(taken)

        await wait_for(fetched, timeout_ms=WAIT_MS, what="the task taken")
        token = getattr(taken[0], "task_token", None)
        assert token, "the engine signs the tasks it publishes"
        await commands.publish_command(run_id, payload, "taken-1", token=token)
        state = await client.wait(run_id, timeout_s=WAIT_MS / 1000)
        await taken[0].ack()
    assert state.status == "completed", state
    assert msgspec.json.decode(state.steps[0].output) == {"made": "up"}


async def _at_least(count: Any, n: int) -> bool:
    return bool(await count() >= n)


def test_a_scoped_worker_credential_needs_valid_task_types(tmp_path: Path) -> None:
    with pytest.raises(credentials.CredentialError, match="1 to"):
        credentials.add_worker(tmp_path, "none", [])
    with pytest.raises(credentials.CredentialError, match="task_types"):
        credentials.add_worker(tmp_path, "bad", ["a b"])
    path = credentials.add_worker(tmp_path, "ok", ["a.b", "c"])
    assert credentials.read_credential(path).task_types == ("a.b", "c")
    with pytest.raises(credentials.CredentialError, match="exists already"):
        credentials.add_worker(tmp_path, "ok", ["a"])
