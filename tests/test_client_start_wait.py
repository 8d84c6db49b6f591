"""`Client.start` and `Client.wait` when the engine has not handled a start yet, the engine's
dead letters, and the effects of a command whose engine stopped after its append, against a
real nats-server and an in-process `Server` (engine and projections) that each test starts
when it wants the start handled.

The rule under test (see `Client.wait`): a run with no history is waited for when this client
started it or a command for it still waits in the commands stream; any other id with no
history is unknown at once. A `WorkflowDef` given to `start` is validated before anything is
published; a start the engine sets aside anyway is logged (run id, command, reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats.errors
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from dagnats.client import Client, RunNotFoundError
from dagnats.client.live_watch import LiveWatch
from dagnats.client.watches import parked_watches_max
from dagnats.runtime import settings
from dagnats.runtime import valid_workflows as valid_workflows_module
from dagnats.runtime.clock import new_seed, now_ms
from dagnats.runtime.engine import Engine
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.queue import JetStreamCommandQueue
from dagnats.runtime.resources import (
    COMMAND_SUBJECTS,
    COMMANDS_STREAM,
    ENGINE_CONSUMER,
    HISTORY_STREAM,
    STORED_PREFIX,
    run_commands_filter,
)
from dagnats.runtime.serve import Server
from kernel import codec
from kernel.commands import StartRun
from kernel.errors import WorkflowInvalidError
from kernel.workflow import StepDef, WorkflowDef, validate_workflow
from tests.fault_support import read_dead
from tests.nats_fixtures import unique, wait_for

wait_s = 30.0
unknown_bound_s = 10.0  # an unknown id must raise well within this (it does not wait)
server_stop_timeout_s = 10.0

# A run that needs no worker: one short durable sleep.
NAP = WorkflowDef(
    name="nap",
    steps=(StepDef(id="nap", type="sleep", config=msgspec.Raw(b'{"duration": "50ms"}')),),
)
# Invalid: its step depends on a step that does not exist.
BROKEN = WorkflowDef(name="broken", steps=(StepDef(id="a", task="t", depends_on=("nope",)),))


@pytest.fixture
def client(private_client: Client) -> Client:
    """This module's tests run on a server of their own."""
    return private_client


@contextlib.asynccontextmanager
async def engine(url: str, data_dir: Path) -> AsyncIterator[Server]:
    """An in-process serve (engine + projections) on an existing server, for a block."""
    server = Server(data_dir, nats_url=url)
    await server.start()
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(stop))
    try:
        yield server
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, server_stop_timeout_s)
        await server.stop()


async def pending_commands(js: JetStreamContext, run_id: str) -> int:
    try:
        await js.get_last_msg(COMMANDS_STREAM, run_commands_filter(run_id))  # any kind
    except nats.js.errors.NotFoundError:
        return 0
    return 1


async def test_wait_waits_for_a_run_this_client_started_before_any_engine_handled_it(
    client: Client, private_server: EmbeddedNats, tmp_path: Path
) -> None:
    run_id = await client.start(NAP, wait_started_s=0)  # no engine runs yet
    assert await client.connection.history.last_seq(run_id) == 0, "nothing handled it yet"
    waiting = asyncio.create_task(client.wait(run_id, timeout_s=wait_s))
    # No engine runs: whenever the wait looks, the history is empty. Had it raised
    # RunNotFoundError (the old behaviour), awaiting it below would raise it.
    await asyncio.sleep(0.1)
    assert not waiting.done(), "wait gave up on a run this client just started"
    async with engine(private_server.url, tmp_path / "data"):
        state = await asyncio.wait_for(waiting, wait_s)
    assert state.status == "completed", state.status
    assert state.run_id == run_id


async def test_wait_of_another_client_waits_while_the_start_is_queued(
    client: Client, private_server: EmbeddedNats, tmp_path: Path
) -> None:
    run_id = await client.start(NAP, wait_started_s=0)
    assert await pending_commands(client.connection.js, run_id) == 1, "the start is queued"
    async with await Client.connect(private_server.url) as other:
        waiting = asyncio.create_task(other.wait(run_id, timeout_s=wait_s))
        await asyncio.sleep(0.1)  # a wait that raised at once would be done by now
        assert not waiting.done(), "another client's wait must wait for a queued start"
        async with engine(private_server.url, tmp_path / "data"):
            state = await asyncio.wait_for(waiting, wait_s)
    assert state.status == "completed", state.status


async def test_wait_for_an_id_nobody_started_raises_at_once(client: Client) -> None:
    run_id = unique("never")
    with pytest.raises(RunNotFoundError) as caught:
        # a long timeout: raising within the bound shows it did not wait for it
        await asyncio.wait_for(client.wait(run_id, timeout_s=600), unknown_bound_s)
    assert caught.value.run_id == run_id


async def test_start_refuses_an_invalid_workflow_def_before_publishing(client: Client) -> None:
    run_id = unique("broken")
    with pytest.raises(WorkflowInvalidError) as caught:
        await client.start(BROKEN, run_id=run_id, wait_started_s=0)
    assert caught.value.workflow == "broken"
    assert any("nope" in str(problem) for problem in caught.value.problems), caught.value
    assert await pending_commands(client.connection.js, run_id) == 0, "nothing was published"
    with pytest.raises(WorkflowInvalidError):
        await client.register_workflow(BROKEN)
    with pytest.raises(RunNotFoundError):
        await asyncio.wait_for(client.wait(run_id, timeout_s=600), unknown_bound_s)
    # a valid definition still starts (the check refuses only what is invalid)
    assert await client.start(NAP, wait_started_s=0)


async def test_the_engine_logs_every_dead_lettered_command_with_its_reason(
    client: Client, private_server: EmbeddedNats, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_id = unique("dead")
    command = StartRun(
        run_id=run_id, at_ms=now_ms(), seed=new_seed(), workflow=BROKEN,
        input=msgspec.Raw(b"null"),
    )  # fmt: skip
    await client.send(command)  # past the client's check, as another client might
    caplog.set_level(logging.WARNING, logger="dagnats.engine")
    js = client.connection.js
    async with engine(private_server.url, tmp_path / "data"):

        async def dead_lettered() -> bool:
            return any(run_id.encode() in letter.data for letter in await read_dead(js))

        await wait_for(dead_lettered, timeout_ms=15_000, what="the start to be dead-lettered")
    records = [r for r in caplog.records if getattr(r, "run_id", None) == run_id]
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    record = records[0]
    assert getattr(record, "command", None) == "start_run"
    assert "invalid workflow" in str(getattr(record, "reason", "")), record.__dict__
    assert "nope" in record.getMessage()
    assert await client.connection.history.last_seq(run_id) == 0, "no history for it"


class StuckTasks:
    """A task publisher that never returns: the engine holding it stops between its append
    and its effects, as a process stopped (SIGSTOP, SIGKILL) right after the append would."""

    def __init__(self) -> None:
        self.called = asyncio.Event()

    async def publish(self, task_type: str, payload: bytes, msg_id: str) -> None:
        self.called.set()
        await asyncio.Event().wait()


async def test_a_redelivered_command_issues_again_the_effects_its_appender_never_ran(
    client: Client,
) -> None:
    connection = client.connection
    run_id = unique("lost-effects")
    task_type = unique("lost")
    workflow = WorkflowDef(name="one", steps=(StepDef(id="a", task=task_type),))
    command = StartRun(
        run_id=run_id, at_ms=now_ms(), seed=new_seed(), workflow=workflow,
        input=msgspec.Raw(b"null"),
    )  # fmt: skip
    data = codec.encode(command)
    stuck = StuckTasks()
    first = Engine(connection.history, stuck, connection.timers, connection.commands)
    handling = asyncio.create_task(first.handle(data, 1))
    await asyncio.wait_for(stuck.called.wait(), wait_s)  # appended, publishing: it "stops"
    handling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await handling
    assert await connection.history.last_seq(run_id) > 0, "the decision is in history"
    nothing = await connection.tasks.fetch(task_type, batch=1, timeout_ms=200)
    assert list(nothing) == [], "the first engine never published the task"

    second = Engine(connection.history, connection.tasks, connection.timers, connection.commands)
    assert await second.handle(data, 2) == "ignored", "the start is in history already"
    tasks = await connection.tasks.fetch(task_type, batch=10, timeout_ms=5_000)
    assert len(tasks) == 1, "the redelivery issued the lost task again"
    assert run_id.encode() in tasks[0].data and tasks[0].subject.endswith(task_type)
    await tasks[0].ack()


async def test_an_old_engine_consumer_gets_the_short_ack_wait(client: Client) -> None:
    js = client.connection.js
    old = api.ConsumerConfig(
        durable_name=ENGINE_CONSUMER, name=ENGINE_CONSUMER, ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=30.0, max_deliver=settings.command_deliver_max,
        max_ack_pending=settings.ack_pending_max, filter_subject=COMMAND_SUBJECTS,
    )  # fmt: skip
    await js.add_consumer(COMMANDS_STREAM, old)  # as a data dir of an older version has it
    queue = JetStreamCommandQueue(js)
    try:
        assert list(await queue.fetch_commands(batch=1, timeout_ms=100)) == []
        info = await js.consumer_info(COMMANDS_STREAM, ENGINE_CONSUMER)
    finally:
        await queue.close()
    assert info.config.ack_wait == settings.command_ack_wait_ms / 1000
    assert info.config.max_deliver == settings.command_deliver_max, "nothing else changed"
    assert info.config.filter_subject == COMMAND_SUBJECTS


async def test_start_and_wait_share_one_watch_that_is_no_consumer_and_sees_the_whole_history(
    client: Client, private_server: EmbeddedNats, tmp_path: Path
) -> None:
    run_id = unique("shared")
    creates: list[str] = []  # JetStream API requests naming this run (seen by a subscriber)

    async def seen(message: Msg) -> None:
        if run_id.encode() in message.data or run_id in message.subject:
            creates.append(message.subject)

    spy = await client.connection.nc.subscribe("$JS.API.>", cb=seen)
    async with engine(private_server.url, tmp_path / "data"):
        updates: list[int] = []
        await client.start(NAP, run_id=run_id)
        state = await client.wait(
            run_id, timeout_s=wait_s, on_update=lambda s, _d: updates.append(s.event_count)
        )
    await spy.unsubscribe()
    assert state.status == "completed", state.status
    # wait folded every decision, the first one too (start read it): its state is history's
    history = [decision async for _, decision in client.history(run_id)]
    assert len(updates) == len(history), (updates, len(history))
    assert state.event_count == sum(len(decision.events) for decision in history)
    # no consumer of the run's history for start and wait: the stream republishes what it
    # stores and the watch subscribes to that (before, one ordered consumer for both; before
    # that, one each); the engine makes none per run
    consumers = [subject for subject in creates if ".CONSUMER." in subject]
    assert consumers == [], creates
    assert any(".DIRECT.GET." in subject for subject in creates), "the spy saw the run's requests"


async def test_many_starts_leave_no_consumer_behind(
    client: Client, private_server: EmbeddedNats, tmp_path: Path
) -> None:
    """A stream holds at most 1,000 consumers: starts from one client that never wait (each
    opens a watch for its `wait`) must not pile theirs up until the server refuses; and a live
    watch's subscription is closed when its watch leaves the parked ones."""
    starts = 1_100
    async with engine(private_server.url, tmp_path / "data"):
        run_ids = [await client.start(NAP) for _ in range(starts)]
        info = await client.connection.js.stream_info(HISTORY_STREAM)
        subscribed = [
            sub for sub in client.connection.nc._subs.values()
            if sub.subject.startswith(f"{STORED_PREFIX}.")
        ]  # fmt: skip
    assert 1 <= len(subscribed) <= parked_watches_max, len(subscribed)
    assert len(set(run_ids)) == starts
    assert info.state.consumer_count is not None
    assert info.state.consumer_count <= parked_watches_max + 8, info.state


async def test_start_sends_the_start_without_waiting_for_its_watch_and_the_watch_misses_nothing(
    client: Client, private_server: EmbeddedNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The StartRun goes out while the watch opens: here the watch opens only once the engine
    has appended the run's first decision (its subscription misses it), and the watch still
    gives it (the next message names the run's message before it: the gap is read from the
    stream, or, with nothing after it, the silence makes the watch read the stream)."""
    real_open = LiveWatch.open
    run_id = unique("early")

    async def open_after_the_first_decision(
        js: JetStreamContext, watched: str, after_seq: int = 0, *, stored: bool = True
    ) -> LiveWatch:
        async def appended() -> bool:
            return await client.connection.history.last_seq(watched) > 0

        await wait_for(appended, timeout_ms=int(wait_s * 1000), what="the first decision")
        return await real_open(js, watched, after_seq, stored=stored)

    monkeypatch.setattr(LiveWatch, "open", open_after_the_first_decision)
    async with engine(private_server.url, tmp_path / "data"):
        await asyncio.wait_for(client.start(NAP, run_id=run_id), wait_s)
        state = await client.wait(run_id, timeout_s=wait_s)
    assert state.status == "completed", state.status
    history = [decision async for _, decision in client.history(run_id)]
    assert state.event_count == sum(len(decision.events) for decision in history)


async def test_a_watch_that_fails_to_open_after_the_start_went_out_leaves_a_run_to_wait_for(
    client: Client, private_server: EmbeddedNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = LiveWatch.open
    failures: list[str] = []

    async def fail_once(
        js: JetStreamContext, watched: str, after_seq: int = 0, *, stored: bool = True
    ) -> LiveWatch:
        if not failures:
            failures.append(watched)
            raise nats.errors.TimeoutError
        return await real_open(js, watched, after_seq, stored=stored)

    monkeypatch.setattr(LiveWatch, "open", fail_once)
    async with engine(private_server.url, tmp_path / "data"):
        run_id = await asyncio.wait_for(client.start(NAP), wait_s)
        state = await client.wait(run_id, timeout_s=wait_s)
    assert failures == [run_id]
    assert state.status == "completed", state.status


async def test_the_engine_validates_a_workflow_once_and_still_refuses_an_invalid_one(
    client: Client, private_server: EmbeddedNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    validated: list[str] = []
    real_validate = validate_workflow

    def counted(workflow: WorkflowDef) -> object:
        validated.append(workflow.name)
        return real_validate(workflow)

    monkeypatch.setattr(valid_workflows_module, "validate_workflow", counted)
    bad = [
        StartRun(run_id=unique("bad"), at_ms=now_ms(), seed=new_seed(), workflow=BROKEN,
                 input=msgspec.Raw(b"null"))
        for _ in range(2)
    ]  # fmt: skip
    js = client.connection.js
    async with engine(private_server.url, tmp_path / "data"):
        for _ in range(3):
            state = await client.wait(await client.start(NAP), timeout_s=wait_s)
            assert state.status == "completed", state.status
        for command in bad:  # past the client's check, as another client might
            await client.send(command)

        async def dead_lettered() -> bool:
            letters = [letter.data for letter in await read_dead(js)]
            return all(any(c.run_id.encode() in data for data in letters) for c in bad)

        await wait_for(dead_lettered, timeout_ms=15_000, what="both bad starts dead-lettered")
    assert validated.count(NAP.name) == 1, validated  # three runs, one validation
    assert validated.count(BROKEN.name) == 2, validated  # an invalid one is never remembered
    for command in bad:
        assert await client.connection.history.last_seq(command.run_id) == 0, "no history"
