"""The client's start/wait path under load and races (raw gets through the router, a wait's
fold in the read loop), against a real nats-server: many gets at once, a message after the
run's end read with it, a stray republished message, late answers, deleted workflows."""

from __future__ import annotations

import asyncio
import socket
import time

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from dagnats.client import Client
from dagnats.client.errors import WorkflowNotFoundError
from dagnats.client.live_watch import LiveWatch
from dagnats.runtime import raw_get
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.resources import ensure_resources, stored_subject
from kernel import codec
from kernel.commands import ReopenRun, SendSignal
from kernel.decide import decide
from kernel.workflow import StepDef, WorkflowDef
from tests.nats_fixtures import unique, wait_for
from tests.test_client_fold_live import folding
from tests.test_live_watch import History

WAIT_S = 20.0
GETS = 5_000  # more than one batch of concurrent starts a user might gather

ONE_TASK = WorkflowDef(name="one-task", steps=(StepDef(id="a", task="t"),))


@pytest.fixture
def client(private_client: Client) -> Client:
    """This module's tests run on a server of their own."""
    return private_client


@pytest.fixture
def js(private_js: JetStreamContext) -> JetStreamContext:
    """This module's tests run on a server of their own."""
    return private_js


async def test_many_concurrent_workflow_gets_on_one_client_all_answer(client: Client) -> None:
    """A user gathering thousands of starts (each a workflow get) on one client: every get
    answers; none is refused by the raw requests' bound (more wait for room)."""
    await client.register_workflow(ONE_TASK)
    got = await asyncio.gather(*(client.get_workflow(ONE_TASK.name) for _ in range(GETS)))
    assert len(got) == GETS
    assert all(workflow.name == ONE_TASK.name for workflow in got)


def _peek(nc: NatsClient) -> bytes:
    """What the server sent the connection and its read loop has not read yet (a peek)."""
    transport = nc._transport._io_writer.transport  # type: ignore[union-attr]
    fileno = transport.get_extra_info("socket").fileno()
    with socket.socket(fileno=socket.dup(fileno)) as dup:
        dup.setblocking(False)
        try:
            return dup.recv(1 << 20, socket.MSG_PEEK)
        except BlockingIOError:
            return b""


async def test_a_message_after_the_end_received_with_it_ends_the_wait(
    private_server: EmbeddedNats, js: JetStreamContext
) -> None:
    """The run's end and a message after it (a reopen: `dagnats run retry`) read by the read
    loop in one pass: the end is folded in the read loop and the reopen held; the waiter,
    woken by the end, gets the state at the end (as it did before the fold moved into the
    read loop), not an AssertionError from folding past the end."""
    nc = await nats.connect(private_server.url)
    watch: LiveWatch | None = None
    try:
        run = History(js, unique("end-then-more"))
        watch = await LiveWatch.open(nc.jetstream(), run.run_id, stored=False)
        await run.start()
        first = await watch.next(time.monotonic() + WAIT_S)
        assert first is not None
        watch.seen.append(first)
        live = watch
        waiting = await folding(live)
        transport = nc._transport._io_writer.transport  # type: ignore[union-attr]
        transport.pause_reading()  # both reach the socket before the read loop reads either
        end = await run.cancel()
        assert run.state is not None and run.state.status == "cancelled"
        ended = run.state
        reopen = ReopenRun(run_id=run.run_id, at_ms=4, reopens=0)
        events = decide(ended, reopen)
        assert isinstance(events, tuple) and events, events
        reopened = await run._append(reopen, codec.encode_decision(reopen, events))
        subject = stored_subject(run.run_id).encode()
        await wait_for(lambda: _peek(nc).count(subject) == 2, timeout_ms=int(WAIT_S * 1000),
                       what="both sent to the watching connection")  # fmt: skip
        transport.resume_reading()
        state = await waiting
        assert state == ended, (end, reopened, state.status)
    finally:
        if watch is not None:
            await watch.close()
        await nc.close()


async def test_a_stray_republished_message_behind_the_watch_leaves_the_read_loop_running(
    private_server: EmbeddedNats, js: JetStreamContext
) -> None:
    """A message on the run's republish subject that names the watch's last sequence as its
    previous one but a sequence not after it (not the stream's: published there by someone
    else) is not folded, and raises nothing in the connection's read loop: the connection
    goes on reading (its flush is answered), the wait goes on to the run's real end."""
    nc = await nats.connect(private_server.url)
    watch: LiveWatch | None = None
    try:
        run = History(js, unique("stray"))
        watch = await LiveWatch.open(nc.jetstream(), run.run_id, stored=False)
        start = await run.start()
        first = await watch.next(time.monotonic() + WAIT_S)
        assert first is not None
        watch.seen.append(first)
        live = watch
        waiting = await folding(live)
        assert run.state is not None
        signal = SendSignal(run_id=run.run_id, at_ms=2, name="stray")
        events = decide(run.state, signal)  # a decision that folds (not appended)
        assert isinstance(events, tuple) and events, events
        headers = {"Nats-Sequence": str(start), "Nats-Last-Sequence": str(start)}
        data = codec.encode_decision(signal, events)
        await js._nc.publish(stored_subject(run.run_id), data, headers=headers)
        await js._nc.flush()
        await nc.flush(timeout=5)  # the read loop still reads
        await run.cancel()
        state = await waiting
        assert state == run.state
        await nc.flush(timeout=5)  # and still reads after it
    finally:
        if watch is not None:
            await watch.close()
        await nc.close()


TWO_TASKS = WorkflowDef(
    name="one-task", steps=(StepDef(id="a", task="t"), StepDef(id="b", task="t"))
)


async def test_a_deleted_or_purged_workflow_is_gone_and_its_new_registration_is_read(
    client: Client,
) -> None:
    """(Found sound.) A workflow deleted, or purged, is not found; registered again, the new
    definition is the one read (not the one before the deletion)."""
    kv = await client.connection.workflows()
    for remove in (kv.delete, kv.purge):
        await client.register_workflow(ONE_TASK)
        assert await client.get_workflow(ONE_TASK.name) == ONE_TASK
        await remove(ONE_TASK.name)
        with pytest.raises(WorkflowNotFoundError):
            await client.get_workflow(ONE_TASK.name)
        assert ONE_TASK.name not in await client.list_workflows()
        assert await client.register_workflow(TWO_TASKS) == 1, "numbered again from 1"
        assert await client.get_workflow(ONE_TASK.name) == TWO_TASKS
        await remove(ONE_TASK.name)


async def test_a_raw_get_answered_after_its_timeout_leaves_nothing_waiting(
    private_server: EmbeddedNats,
) -> None:
    """(Found sound.) A get whose answer comes after its timeout raises TimeoutError; the
    late answer is dropped in the read loop (nothing raised there), nothing stays waiting,
    and the next get on the connection is answered."""
    nc = await nats.connect(private_server.url)
    try:
        replier = await nc.subscribe("slow.get")
        js = nc.jetstream(timeout=0.2)
        with pytest.raises(nats.errors.TimeoutError):
            await _slow(js)
        late = await replier.next_msg(timeout=5)
        await nc.publish(late.reply, b'{"error":{"code":404}}')
        await nc.flush(timeout=5)
        assert not raw_get._requests(nc).waiting
        fast = nc.jetstream()
        await ensure_resources(fast)
        assert await raw_get.message_get(fast, "KV_dagnats_workflows", {"seq": 1}) is None
    finally:
        await nc.close()


async def _slow(js: JetStreamContext) -> object:
    """A request to a subject the test answers by hand (late)."""
    return await raw_get._requests(js._nc).request("slow.get", b"{}", js._timeout)
