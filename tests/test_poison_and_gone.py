"""Poison never wedges a run, and a deleted history stream is said once, clearly.

Real `dagnats serve` and worker subprocesses (tests/fault_support.py), garbage and deletions
made over a plain NATS connection: a run whose history holds a message that does not decode is
parked, and every CLI command on it answers with one line naming the run, the sequence and
what is wrong (exit 1, no traceback), while other runs complete; when the history stream is
deleted, serve logs it once, every command answers "the history stream is gone: ..." and no
empty stream is created in its place; once it is restored, the engine runs again.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from typing import Final

import nats
from nats.js import JetStreamContext

from dagnats.client import Client
from dagnats.runtime.history_guard import HISTORY_GONE_MESSAGE
from dagnats.runtime.resources import HISTORY_STREAM, history_subject, stream_configs
from tests.fault_support import Processes, connected, role_options, workflow
from tests.nats_fixtures import wait_for

run_timeout_s: Final = 30.0
GARBAGE: Final = b"\x00garbage{"
ONE_STEP: Final = [{"id": "only", "task": "fault.work"}]



async def run_one(url: str, name: str) -> str:
    async with connected(url) as client:
        await client.register_workflow(workflow(name, ONE_STEP))
        run_id = await client.start(name, {"w": name})
        final = await client.wait(run_id, timeout_s=run_timeout_s)
    assert final.status == "completed", final.error
    return run_id


def assert_one_line(done: subprocess.CompletedProcess[str], expected: str) -> None:
    returncode, stderr = done.returncode, done.stderr
    assert returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    first = stderr.splitlines()[0]
    assert first.startswith("error: ") and expected in first, stderr


async def test_a_run_with_an_undecodable_message_is_parked_and_says_so(procs: Processes) -> None:
    data_dir = procs.tmp_path / "data"
    serve = await procs.serve(data_dir)
    procs.worker(serve.url)
    async with connected(serve.url) as client:
        await client.register_workflow(
            workflow("stuck", [{"id": "s", "type": "wait_signal", "config": {"signal": "go"}}])
        )
        run_id = await client.start("stuck", {})
        await wait_for(lambda: _has_history(client, run_id), timeout_ms=10_000,
                       what="the run's first history message")  # fmt: skip
    nc = await nats.connect(serve.url, **role_options(data_dir))  # forging: admin
    try:
        ack = await nc.jetstream().publish(history_subject(run_id), GARBAGE)
    finally:
        await nc.close()
    line = f"run '{run_id}' is parked: history message at sequence {ack.seq} does not decode"
    dir_args = ("--data-dir", str(data_dir))
    for args in (("run", "show", run_id), ("run", "history", run_id),
                 ("run", "signal", run_id, "go"), ("run", "cancel", run_id),
                 ("run", "wait", run_id, "--timeout", "5")):  # fmt: skip
        assert_one_line(procs.cli(*args, *dir_args), line)
    assert await run_one(serve.url, "healthy")  # the other runs go on
    assert serve.process.alive()


async def test_a_deleted_history_stream_is_reported_once_and_never_recreated_empty(
    procs: Processes,
) -> None:
    data_dir = procs.tmp_path / "data"
    serve = await procs.serve(data_dir)
    procs.worker(serve.url)
    await run_one(serve.url, "before")
    nc = await nats.connect(serve.url, **role_options(data_dir))  # forging: admin
    try:
        js = nc.jetstream()
        assert await js.delete_stream(HISTORY_STREAM)
        await wait_for(lambda: HISTORY_GONE_MESSAGE in serve.process.stderr(), timeout_ms=10_000,
                       what="serve to report the history stream gone")  # fmt: skip
        dir_args = ("--data-dir", str(data_dir))
        for args in (("run", "show", "nosuchrun"), ("run", "start", "before"),
                     ("workflow", "list"), ("approval", "list")):  # fmt: skip
            assert_one_line(procs.cli(*args, *dir_args), HISTORY_GONE_MESSAGE)
        assert serve.process.alive()
        assert serve.process.stderr().count(HISTORY_GONE_MESSAGE) == 1
        names = [name async for name in _stream_names(js)]
        assert HISTORY_STREAM not in names, "serve created an empty history stream"
        await js.add_stream(stream_configs()[0])  # restored (here: empty, as a backup might be)
        await wait_for(
            lambda: "history stream is back" in serve.process.stderr(),
            timeout_ms=10_000,
            what="serve to see the history stream back",
        )
    finally:
        await nc.close()
    assert await run_one(serve.url, "after")
    assert serve.process.stderr().count(HISTORY_GONE_MESSAGE) == 1


async def _has_history(client: Client, run_id: str) -> bool:
    return await client.connection.history.last_seq(run_id) > 0


async def _stream_names(js: JetStreamContext) -> AsyncIterator[str]:
    for info in await js.streams_info():
        assert info.config.name is not None
        yield info.config.name
