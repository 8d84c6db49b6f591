"""Prometheus metrics of a real serve (embedded nats-server, engine, reporter) and a worker in
this process: the text parses with the Prometheus parser and its counters match the runs
made; the gauges hold the queues, streams, projections and workers; `--metrics` serves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dagnats import Client, Worker
from dagnats.observe.metrics import Metrics, MetricsServer, parse_address, render
from dagnats.runtime.serve import Server
from examples.order.worker import worker as order_worker
from tests.nats_fixtures import wait_for

ORDER = Path(__file__).resolve().parent.parent / "examples" / "order"
WAIT_S = 30.0
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@contextlib.asynccontextmanager
async def served(data_dir: Path, worker: Worker) -> AsyncIterator[tuple[Server, Client]]:
    """A serve (its Server, to read its metrics), `worker` and a client, in this process."""
    server = Server(data_dir)
    info = await server.start()
    stop = asyncio.Event()
    engine_task = asyncio.create_task(server.run(stop))
    worker_client = await Client.connect(info.nats_url, role="worker")
    connection = worker_client.connection
    worker_task = asyncio.create_task(
        worker.serve(connection.tasks, connection.commands, connection.commands, stop)
    )
    client = await Client.connect(info.nats_url)
    try:
        yield server, client
    finally:
        stop.set()
        for task in (worker_task, engine_task):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=10)
        await client.close()
        await worker_client.close()
        await server.stop()


def samples(text: str) -> Samples:
    """Every sample of the Prometheus text, by (name, labels); the parser must accept it."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def test_the_metrics_parse_and_their_counters_match_the_runs_made(tmp_path: Path) -> None:
    order = json.loads((ORDER / "input.json").read_text())
    async with served(tmp_path / "data", order_worker) as (server, client):
        await client.register_workflow((ORDER / "workflow.json").read_bytes())
        good = [await client.start("order", {**order, "order_id": f"A-{n}"}) for n in range(3)]
        bad = await client.start("order", {**order, "items": []})  # refused by validate
        states = [await client.wait(run_id, timeout_s=WAIT_S) for run_id in [*good, bad]]
        assert [s.status for s in states[:3]] == ["completed"] * 3
        bad_status = states[3].status
        assert bad_status != "completed"

        def finished() -> float:
            found = samples(render(server.metrics).decode())
            return sum(
                value(found, "dagnats_runs_finished_total", workflow="order", status=status)
                for status in {"completed", bad_status}
            )

        await wait_for(lambda: finished() == 4, timeout_ms=5_000, what="4 finished runs")
        assert server.reporter is not None
        await server.reporter.report_once()
        found = samples(render(server.metrics).decode())

    assert value(found, "dagnats_runs_started_total", workflow="order") == 4
    assert value(found, "dagnats_runs_finished_total", workflow="order", status="completed") == 3
    assert value(found, "dagnats_runs_finished_total", workflow="order", status=bad_status) == 1
    # payments.charge fails its first attempt in every run that reaches it (the example's
    # flaky gateway): three runs, three failed attempts and three completed.
    charge = {"task": "payments.charge"}
    assert value(found, "dagnats_step_attempts_total", outcome="failed", **charge) == 3
    assert value(found, "dagnats_step_attempts_total", outcome="completed", **charge) == 3
    assert value(found, "dagnats_step_duration_seconds_count", **charge) == 6
    validate = {"task": "order.validate"}
    assert value(found, "dagnats_step_attempts_total", outcome="completed", **validate) == 3
    assert value(found, "dagnats_step_attempts_total", outcome="failed", **validate) == 1
    assert value(found, "dagnats_engine_decision_seconds_count", outcome="applied") >= 4 * 3
    assert value(found, "dagnats_workers") == 1
    assert value(found, "dagnats_approvals_pending") == 0
    assert value(found, "dagnats_stream_messages", stream="DAGNATS_HISTORY") > 0
    assert ("dagnats_queue_depth", frozenset({("queue", "commands")})) in found
    assert ("dagnats_projection_lag", frozenset({("projection", "snapshots")})) in found
    positions = {
        dict(labels)["projection"]: sample
        for (name, labels), sample in found.items()
        if name == "dagnats_projection_position"
    }
    assert set(positions) == {"dagnats", "snapshots"}  # the query tables, the KV snapshots
    assert all(position > 0 for position in positions.values())


def test_metrics_are_served_over_http_and_parse() -> None:
    metrics = Metrics()
    metrics.run_started("w")
    metrics.run_finished("w", "failed")
    http = MetricsServer(metrics, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{http.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    finally:
        http.stop()
    found = samples(text)
    assert value(found, "dagnats_runs_started_total", workflow="w") == 1
    assert value(found, "dagnats_runs_finished_total", workflow="w", status="failed") == 1
    assert value(found, "dagnats_runs_finished_total", workflow="w", status="completed") == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), (":9464", ("127.0.0.1", 9464)),
     ("9464", ("127.0.0.1", 9464)), ("0.0.0.0:80", ("0.0.0.0", 80)),
     ("[::1]:9464", ("::1", 9464))],
)  # fmt: skip
def test_a_metrics_address_parses(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "host:", "host:port", ":0", ":65536", "a:-1"])
def test_a_bad_metrics_address_names_the_value_and_the_rule(text: str) -> None:
    with pytest.raises(ValueError, match=r"--metrics .* is not HOST:PORT with a port within"):
        parse_address(text)
