"""Single-message gets answered raw (runtime/raw_get.py), and the client's reads that use
them (the workflow's latest entry, a caller-given run's first history message), against a
real nats-server.

A get gives what nats-py's `get_msg` gives (the message, None where nats-py raises
NotFoundError) without a `Msg`, a header dict or the email parser; the client's `start`
and `get_workflow` make no nats-py message get at all. A workflow read is the bucket's
latest entry at once (a re-registration is used by the next start), and a deleted or
purged one is not found, as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgspec
import nats
import nats.errors
import pytest
from nats.js import JetStreamContext

from dagnats.client import Client, RunExistsError, WorkflowNotFoundError
from dagnats.runtime import raw_get
from dagnats.runtime.nats_server import EmbeddedNats
from dagnats.runtime.raw_get import direct_get, first_message, kv_operation, message_get
from dagnats.runtime.resources import (
    HISTORY_STREAM,
    RUNS_BUCKET,
    WORKFLOWS_BUCKET,
    history_subject,
)
from kernel.workflow import StepDef, WorkflowDef
from tests.nats_fixtures import unique
from tests.test_client_start_wait import NAP, engine

WAIT_S = 30.0


@pytest.fixture
def js(private_js: JetStreamContext) -> JetStreamContext:
    """This module's tests run on a server of their own."""
    return private_js


@pytest.fixture
def client(private_client: Client) -> Client:
    """This module's tests run on a server of their own."""
    return private_client


async def test_a_message_get_gives_the_latest_entry_and_none_for_a_missing_one(
    js: JetStreamContext,
) -> None:
    kv = await js.key_value(WORKFLOWS_BUCKET)
    key = unique("key")
    await kv.put(key, b"one")
    second = await kv.put(key, b"two")
    stream = f"KV_{WORKFLOWS_BUCKET}"
    entry = await message_get(js, stream, {"last_by_subj": f"$KV.{WORKFLOWS_BUCKET}.{key}"})
    assert entry is not None
    assert (entry.seq, entry.data, kv_operation(entry.hdrs)) == (second, b"two", b"")
    missing = {"last_by_subj": f"$KV.{WORKFLOWS_BUCKET}.{unique('none')}"}
    assert await message_get(js, stream, missing) is None
    assert await message_get(js, "KV_no_such_bucket", missing) is None
    await kv.delete(key)
    deleted = await message_get(js, stream, {"last_by_subj": f"$KV.{WORKFLOWS_BUCKET}.{key}"})
    assert deleted is not None and kv_operation(deleted.hdrs) == b"DEL"
    assert deleted.data == b""


async def test_a_direct_get_gives_a_subjects_first_message_and_none_when_it_has_none(
    js: JetStreamContext,
) -> None:
    run_id = unique("direct")
    acks = [await js.publish(history_subject(run_id), f"m{n}".encode()) for n in range(3)]
    request: dict[str, object] = {"seq": 1, "next_by_subj": history_subject(run_id)}
    found = await direct_get(js, HISTORY_STREAM, request)
    assert found is not None
    assert (found.subject, found.seq, found.data) == (history_subject(run_id), acks[0].seq, b"m0")
    assert await first_message(js, run_id) == (acks[0].seq, b"m0")
    assert await first_message(js, unique("none")) is None
    # A stream that allows no direct gets has no one to answer them.
    with pytest.raises(nats.errors.NoRespondersError):
        await direct_get(js, f"KV_{RUNS_BUCKET}", request)


async def test_a_replicated_history_asks_its_leader_when_a_direct_get_misses(
    js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower may not have a run's first message yet: the miss is asked again of the
    stream's leader (STREAM.MSG.GET)."""
    run_id = unique("follower")
    ack = await js.publish(history_subject(run_id), b"first")

    async def missing(*_: object) -> None:
        return None  # as a follower that has not got the message yet

    async def replicated(_: object) -> bool:
        return True

    monkeypatch.setattr(raw_get, "direct_get", missing)
    monkeypatch.setattr(raw_get, "history_replicated", replicated)
    assert await first_message(js, run_id) == (ack.seq, b"first")
    assert await first_message(js, unique("none")) is None


async def test_a_get_no_one_answers_times_out_and_leaves_nothing_waiting(
    private_server: EmbeddedNats,
) -> None:
    nc = await nats.connect(private_server.url)
    try:
        silent = await nc.subscribe("SILENT.API.>")  # hears, never answers
        js = nc.jetstream(prefix="SILENT.API", timeout=0.2)
        with pytest.raises(nats.errors.TimeoutError):
            await message_get(js, "ANY", {"seq": 1})
        assert raw_get._requests(nc).waiting == {}
        await silent.unsubscribe()
    finally:
        await nc.close()


async def test_start_and_get_workflow_make_no_nats_py_message_get(
    client: Client, private_server: EmbeddedNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await client.register_workflow(NAP)
    js = client.connection.js

    get_msg = js.get_msg
    read_raw = (f"KV_{WORKFLOWS_BUCKET}", HISTORY_STREAM)  # (other reads: the partition count)

    async def refused(stream: str, *args: object, **kwargs: object) -> object:
        assert stream not in read_raw, f"a nats-py message get: {stream} {args} {kwargs}"
        return await get_msg(stream, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(js, "get_msg", refused)  # (this client's context only: not serve's)
    assert (await client.get_workflow("nap")).steps == NAP.steps
    run_id = unique("given")
    async with engine(private_server.url, tmp_path / "data"):
        assert await client.start("nap", {"n": 1}, run_id=run_id) == run_id
        assert (await client.wait(run_id, timeout_s=WAIT_S)).status == "completed"
        assert await client.start("nap", {"n": 1}, run_id=run_id) == run_id  # the same start
        with pytest.raises(RunExistsError):
            await client.start("nap", {"n": 2}, run_id=run_id)  # another input


async def test_a_reregistered_workflow_is_used_by_the_next_start_at_once(
    client: Client, private_server: EmbeddedNats, tmp_path: Path
) -> None:
    name = unique("rereg")
    first = WorkflowDef(name=name, steps=NAP.steps)
    nap = msgspec.Raw(b'{"duration": "10ms"}')
    second = WorkflowDef(name=name, steps=(StepDef(id="other", type="sleep", config=nap),))
    assert await client.register_workflow(first) == 1
    assert (await client.get_workflow(name)).steps == first.steps
    assert await client.register_workflow(second) == 2
    assert (await client.get_workflow(name)).steps == second.steps
    async with engine(private_server.url, tmp_path / "data"):
        run_id = await client.start(name)
        state = await client.wait(run_id, timeout_s=WAIT_S)
    assert state.workflow is not None and state.workflow.steps == second.steps


async def test_a_deleted_or_purged_workflow_is_not_found(client: Client) -> None:
    kv = await client.connection.workflows()
    for end in ("delete", "purge"):
        name = unique(end)
        await client.register_workflow(WorkflowDef(name=name, steps=NAP.steps))
        await (kv.delete(name) if end == "delete" else kv.purge(name))
        with pytest.raises(WorkflowNotFoundError, match=name):
            await client.get_workflow(name)
        with pytest.raises(WorkflowNotFoundError, match=name):
            await client.start(name)
        assert name not in await client.list_workflows()
    with pytest.raises(WorkflowNotFoundError):
        await client.get_workflow("no.such..key")  # not even a possible key


async def test_a_wait_for_another_clients_run_reads_its_last_sequence_once(
    client: Client, private_server: EmbeddedNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether the run has history and where its history ends at the wait's start are one
    read (they were two, each a direct get of the run's last message)."""
    async with engine(private_server.url, tmp_path / "data"):
        run_id = await client.start(NAP)
        async with await Client.connect(private_server.url) as other:
            reads: list[str] = []
            direct = raw_get.direct_get

            async def counted(
                js: JetStreamContext, stream: str, request: Mapping[str, object]
            ) -> raw_get.StoredMessage | None:
                if js._nc is other.connection.js._nc:
                    reads.append(stream)
                return await direct(js, stream, request)

            monkeypatch.setattr(raw_get, "direct_get", counted)
            assert (await other.wait(run_id, timeout_s=WAIT_S)).status == "completed"
            # One for the wait, one for its watch's read of what the run holds (was three).
            assert reads.count(HISTORY_STREAM) == 2, reads
