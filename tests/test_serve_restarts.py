"""Restarting `dagnats serve` as the Quick start does, with workers left running.

Real processes (tests/fault_support.py): serve keeps its NATS port across restarts (and takes
a new one, logged, only when the old one is taken, which a worker that found serve through the
data dir follows); a worker logs an outage in a few lines, not one per reconnect attempt;
SIGTERM or SIGINT to a worker while NATS is down ends it cleanly; `run start --wait` and
`run wait` print how the run ended when stdout is not a terminal. Plus, in process: the
rate-limited outage log (a hypothesis property), and a worker that gives up on a result the
server never acknowledges, with one readable line.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from pathlib import Path
from typing import Final

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagnats.runtime.connection import Connection
from dagnats.runtime.nats_server import LOOPBACK_HOST, EmbeddedNats
from dagnats.runtime.outage import OutageLog
from dagnats.runtime.serve import PORT_FILE
from dagnats.worker import ResultNotSentError, Worker
from kernel.commands import CompleteTask
from tests.fault_support import Processes, connected, workflow
from tests.fault_workers import BEAT_MS_ENV
from tests.nats_fixtures import wait_for
from tests.test_result_crashes import data_dir_of, data_dir_worker, kill_serve

step_timeout_ms: Final = 15_000
run_timeout_s: Final = 30.0
down_window_s: Final = 3.0  # how long the server stays away while the test counts log lines



ONE_STEP: Final = [{"id": "only", "task": "fault.work"}]


async def run_one(url: str, workflow_name: str) -> str:
    async with connected(url) as client:
        await client.register_workflow(workflow(workflow_name, ONE_STEP))
        run_id = await client.start(workflow_name, {"w": workflow_name})
        final = await client.wait(run_id, timeout_s=run_timeout_s)
    assert final.status == "completed", final.error
    return run_id


# -- the port ----------------------------------------------------------------------------------


async def test_a_restarted_serve_keeps_its_port(procs: Processes) -> None:
    data_dir = data_dir_of(procs)
    first = await procs.serve(data_dir)
    assert (data_dir / PORT_FILE).read_text().strip() == str(first.port)
    assert await first.process.terminate() == 0
    assert not (data_dir / "nats.url").exists()  # a clean stop removes the URL, not the port
    second = await procs.serve(data_dir)
    assert second.port == first.port
    await kill_serve(second)
    third = await procs.serve(data_dir)
    assert third.port == first.port
    assert "is taken" not in third.process.stderr()


async def test_a_taken_port_gives_a_new_one_which_a_running_worker_follows(
    procs: Processes,
) -> None:
    data_dir = data_dir_of(procs)
    serve = await procs.serve(data_dir)
    worker = await data_dir_worker(procs)
    await run_one(serve.url, "before-move")
    old_port = serve.port
    await kill_serve(serve)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # The killed server's nats-server child may hold the port a moment longer.
        await wait_for(
            lambda: _bound(squatter, old_port),
            timeout_ms=step_timeout_ms,
            what=f"port {old_port} to be free for the squatter",
        )
        squatter.listen()
        moved = await procs.serve(data_dir)
        assert moved.port != old_port
        assert f"port {old_port} (NATS's port last time) is taken" in moved.process.stderr()
        assert (data_dir / PORT_FILE).read_text().strip() == str(moved.port)
        await wait_for(
            lambda: f"now names {moved.url}" in worker.stderr(),
            timeout_ms=step_timeout_ms,
            what="the worker to read the new URL from nats.url",
        )
        await run_one(moved.url, "after-move")  # served by the worker that followed
    assert worker.alive()
    assert "Traceback" not in worker.stderr()


def _bound(sock: socket.socket, port: int) -> bool:
    """Bind `sock` to the loopback `port`; False while someone else still holds it."""
    try:
        sock.bind((LOOPBACK_HOST, port))
    except OSError:
        return False
    return True


# -- logs while the server is away -------------------------------------------------------------


async def test_a_worker_logs_an_outage_in_one_line_and_its_end_in_one(
    procs: Processes,
) -> None:
    data_dir = data_dir_of(procs)
    serve = await procs.serve(data_dir)
    procs.extra_env[BEAT_MS_ENV] = "200"  # directory beats fall inside the outage window
    worker = await data_dir_worker(procs)
    before = len(worker.stderr().splitlines())
    await kill_serve(serve)
    await wait_for(
        lambda: ": failing (" in worker.stderr(),
        timeout_ms=step_timeout_ms,
        what="the worker to log the outage",
    )
    await asyncio.sleep(down_window_s)  # a bounded window of reconnect attempts (~30)
    down_lines = worker.stderr().splitlines()[before:]
    assert len(down_lines) == 1 and ": failing (" in down_lines[0], down_lines
    restarted = await procs.serve(data_dir)
    await wait_for(
        lambda: ": works again after" in worker.stderr(),
        timeout_ms=step_timeout_ms,
        what="the worker to log the recovery",
    )
    await run_one(restarted.url, "after-outage")
    lines = worker.stderr().splitlines()[before:]
    assert len(lines) == 2 and ": works again after" in lines[1], lines


@given(
    gaps_ms=st.lists(st.integers(min_value=0, max_value=5_000), min_size=1, max_size=200),
    interval_ms=st.integers(min_value=1, max_value=20_000),
    quiet=st.integers(min_value=0, max_value=3),
)
def test_an_outage_logs_its_start_a_line_per_interval_and_its_end(
    gaps_ms: list[int], interval_ms: int, quiet: int
) -> None:
    now = [0.0]
    logger = logging.getLogger("tests.outage")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        outage = OutageLog(
            logger, "thing", interval_ms=interval_ms, clock=lambda: now[0], quiet_failures=quiet
        )
        for gap_ms in gaps_ms:
            now[0] += gap_ms / 1000
            outage.failed(OSError("refused"))
        down_s = now[0] - sum(gaps_ms[:1]) / 1000
        outage.recovered()
        outage.recovered()  # nothing more: it works already
    finally:
        logger.removeHandler(handler)
    messages = [record.getMessage() for record in records]
    assert not outage.down and outage.failures == 0
    if len(gaps_ms) <= quiet:  # a blip: not a line
        assert messages == []
        return
    assert messages[0] == "thing: failing (refused)"
    assert messages[-1].startswith("thing: works again after")
    assert f"({len(gaps_ms)} failures)" in messages[-1]
    summaries = messages[1:-1]
    assert all("still failing" in message for message in summaries)
    assert len(summaries) <= down_s / (interval_ms / 1000)


# -- stopping a worker while NATS is down ------------------------------------------------------


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
async def test_a_worker_stopped_while_nats_is_down_exits_cleanly(
    procs: Processes, stop_signal: signal.Signals
) -> None:
    data_dir = data_dir_of(procs)
    serve = await procs.serve(data_dir)
    worker = await data_dir_worker(procs)
    await kill_serve(serve)
    await wait_for(
        lambda: ": failing (" in worker.stderr(),
        timeout_ms=step_timeout_ms,
        what="the worker to notice the server is gone",
    )
    worker.popen.send_signal(stop_signal)
    code = await worker.wait_exit(timeout_ms=step_timeout_ms)
    stderr = worker.stderr()
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert "Task exception was never retrieved" not in stderr, stderr
    assert f"{stop_signal.name}: draining" in stderr


# -- the outcome line without a terminal -------------------------------------------------------


async def test_run_start_wait_and_run_wait_print_the_outcome_without_a_terminal(
    procs: Processes, tmp_path: Path
) -> None:
    data_dir = data_dir_of(procs)
    await procs.serve(data_dir)
    await data_dir_worker(procs)
    good = tmp_path / "good.json"
    good.write_bytes(workflow("outcome-good", ONE_STEP))
    bad = tmp_path / "bad.json"
    bad_step = {**ONE_STEP[0], "metadata": {"fail": "non_retryable"}}
    bad.write_bytes(workflow("outcome-bad", [bad_step]))
    for file in (good, bad):
        assert procs.cli("workflow", "register", str(file)).returncode == 0

    started = procs.cli("run", "start", "outcome-good", "--run-id", "g1", "--wait")
    assert started.returncode == 0, started.stderr
    lines = started.stdout.splitlines()
    assert lines[0] == "started run g1", lines
    assert lines[-1].startswith("run g1 completed: output {"), lines
    assert '"step":"only"' in lines[-1].replace(" ", ""), lines

    failed = procs.cli("run", "start", "outcome-bad", "--run-id", "b1", "--wait")
    assert failed.returncode == 1, failed.stderr
    last = failed.stdout.splitlines()[-1]
    assert last.startswith("run b1 failed: "), failed.stdout
    assert "asked to fail" in last, last

    waited = procs.cli("run", "wait", "b1")
    assert waited.returncode == 1
    assert waited.stdout.splitlines()[-1] == last, waited.stdout

    as_json = procs.cli("run", "wait", "g1", "--json")
    assert as_json.returncode == 0
    assert msgspec.json.decode(as_json.stdout)["status"] == "completed"  # JSON only


# -- a result the server never acknowledges ------------------------------------------------------


async def test_a_worker_gives_up_on_a_result_after_its_bound_with_one_readable_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = EmbeddedNats(tmp_path / "data")
    await server.start()
    connection = await Connection.open(server.url)
    try:
        await server.stop()  # the server goes away for good
        connection.js._timeout = 0.2  # (each try's ack wait: keep the test short)
        worker = Worker()
        worker.result_send_ms_max = 1_000
        result = CompleteTask(
            run_id="r1", at_ms=1, seed=1, step_id="s1", attempt=3, output=msgspec.Raw(b"1")
        )
        with (
            caplog.at_level(logging.INFO, logger="dagnats.worker"),
            pytest.raises(ResultNotSentError) as caught,
        ):
            await worker._send(connection.commands, result, "result", "r1:s1:3~0000002a")
    finally:
        await connection.close()
    assert caught.value.msg_id == "result:r1:s1:3~0000002a"
    assert caught.value.tries >= 2
    assert "gave up sending result:r1:s1:3~0000002a after" in str(caught.value)
    assert "delivered again and reported lost" in str(caught.value)
    warnings = [r.getMessage() for r in caplog.records if r.name == "dagnats.worker"]
    assert len(warnings) == 1, warnings
    assert "result:r1:s1:3~0000002a not acknowledged" in warnings[0], warnings
