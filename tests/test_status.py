"""`dagnats status` and `dagnats serve --metrics` against real processes: a `dagnats serve`
(embedded nats-server) and a `dagnats worker` of the order example, one order run; then
`dagnats status --json` and its screen, and `/metrics` over HTTP. The screen's text for an
engine that stopped reporting, or never did, is checked from made-up facts.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from dagnats.cli.status import render_status
from dagnats.observe.status import EngineRecord, Facts, ServerFacts
from dagnats.runtime import credentials
from tests.fault_support import REPO_ROOT, Processes, connected, dagnats_command
from tests.nats_fixtures import wait_for

ORDER = REPO_ROOT / "examples" / "order"
WAIT_S = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])



async def start_serve(processes: Processes, data_dir: Path, metrics_port: int | None) -> str:
    """`dagnats serve --json [--metrics 127.0.0.1:PORT]`; its NATS URL once it is ready."""
    argv = [*dagnats_command(), "serve", "--data-dir", str(data_dir), "--json"]
    if metrics_port is not None:
        argv += ["--metrics", f"127.0.0.1:{metrics_port}"]
    serve = processes.start("serve", argv)
    info: dict[str, Any] = {}

    def ready() -> bool:
        assert serve.alive(), serve.tail()
        first, newline, _ = serve.stdout().partition("\n")
        if newline:
            info.update(json.loads(first))
        return bool(newline)

    await wait_for(ready, timeout_ms=20_000, what="serve's ready line")
    processes.data_dir = data_dir
    credentials.register_local_server(info["nats_url"], data_dir)
    return str(info["nats_url"])


def status_json(processes: Processes) -> dict[str, Any]:
    done = processes.cli("status", "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def test_status_and_metrics_of_a_real_serve_after_an_order(
    processes: Processes, tmp_path: Path
) -> None:
    metrics_port = free_port()
    url = await start_serve(processes, tmp_path / "data", metrics_port)
    worker_argv = [*dagnats_command(), "worker", "examples.order.worker:worker", "--nats-url", url]
    processes.start("worker", worker_argv)
    async with connected(url) as client:
        await client.register_workflow((ORDER / "workflow.json").read_bytes())
        run_id = await client.start("order", json.loads((ORDER / "input.json").read_text()))
        state = await client.wait(run_id, timeout_s=WAIT_S)
        assert state.status == "completed" and state.ended_at_ms is not None
        ended_at_ms = state.ended_at_ms

    facts: dict[str, Any] = {}

    def reported() -> bool:  # the engine's record is refreshed every status_interval_ms
        facts.clear()
        facts.update(status_json(processes))
        projections = {p["name"]: p for p in facts["projections"]}
        caught_up = all(p["lag"] == 0 for p in projections.values())
        engine = facts["engine"] or {"updated_at_ms": 0}
        caught_up = caught_up and engine["updated_at_ms"] > ended_at_ms  # after the run
        return bool(facts["workers"]) and caught_up and {"snapshots", "dagnats"} <= set(projections)

    await wait_for(reported, timeout_ms=20_000, what="a status with the worker")
    engine = facts["engine"]
    assert engine is not None and engine["stale"] is False and len(facts["engines"]) == 1
    assert engine["counters"]["applied"] >= 6  # start, and a result per attempt at least
    assert len(facts["workers"]) == 1
    streams = {s["name"]: s for s in facts["streams"]}
    assert streams["DAGNATS_HISTORY"]["messages"] >= 6 and streams["DAGNATS_HISTORY"]["bytes"] > 0
    # Every task was taken and acked: the stream keeps only its anchor (runtime/queue_anchor),
    # which no queue depth counts.
    assert streams["DAGNATS_TASKS"]["messages"] == 1
    assert facts["queues"] == {"commands": 0}
    assert facts["approvals_pending"] == 0
    assert facts["server"]["version"].count(".") == 2 and facts["server"]["url"].startswith("nats://127.0.0.1:")

    screen = processes.cli("status")
    assert screen.returncode == 0, screen.stderr
    for text in ("server", "engine", "up", facts["workers"][0], "projections", "snapshots",
                 "DAGNATS_HISTORY", "work queues", "pending approvals  0"):  # fmt: skip
        assert text in screen.stdout, f"{text!r} not in:\n{screen.stdout}"

    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert values[("dagnats_runs_started_total", (("workflow", "order"),))] == 1
    finished = ("dagnats_runs_finished_total", (("status", "completed"), ("workflow", "order")))
    assert values[finished] == 1
    assert values[("dagnats_workers", ())] == 1


def facts_with(engines: list[EngineRecord]) -> Facts:
    return Facts(
        at_ms=100_000,
        server=ServerFacts(url="nats://127.0.0.1:4222", version="2.12.0"),
        engine=engines[0] if engines else None,
        engines=engines,
        projections=[],
        streams=[],
        queues={},
        workers=[],
        approvals_pending=None,
    )


def screen_of(facts: Facts) -> str:
    console = Console(record=True, width=160, color_system=None)
    console.print(render_status(facts, Path("/nowhere/dagnats.sqlite")))
    return console.export_text()


def test_the_screen_says_in_words_when_the_engine_is_down_or_never_reported() -> None:
    down = EngineRecord(
        engine_id="host-1", host="host", pid=1, started_at_ms=0, updated_at_ms=40_000, stale=True
    )
    text = screen_of(facts_with([down]))
    assert "host-1: DOWN (last report 60 s ago)" in text
    assert "unknown (no query tables at /nowhere/dagnats.sqlite)" in text
    up = EngineRecord(engine_id="host-2", host="host", pid=2, started_at_ms=0, updated_at_ms=99_000)
    text = screen_of(facts_with([up]))
    assert "host-2: up 1m40s" in text and "DOWN" not in text
    assert "none has reported" in screen_of(facts_with([]))
