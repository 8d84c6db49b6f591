"""End to end against a real `dagnats serve` and real `dagnats worker` processes: a grouped
task reaches only a worker of its group; until one is live, `run show` says the step waits
for that group; `dagnats workers list` shows the live workers (and forgets a stopped one)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from tests.fault_support import Process, Processes, connected, dagnats_command, workflow
from tests.nats_fixtures import wait_for

wait_ms = 20_000



def cli_json(procs: Processes, *args: str) -> Any:
    done = procs.cli(*args, "--json")
    assert done.returncode == 0, f"dagnats {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


def grouped_worker(procs: Processes, url: str, group: str) -> Process:
    argv = [*dagnats_command(), "worker", "tests.fault_workers:worker", "--nats-url", url,
            "--group", group]  # fmt: skip
    return procs.start("gpu-worker", argv)


async def test_a_grouped_task_reaches_only_its_group_and_waits_visibly_for_it(
    procs: Processes, tmp_path: Path
) -> None:
    serve = await procs.serve(tmp_path / "data")
    url = ("--nats-url", serve.url)
    plain = procs.cli_worker(serve.url)
    steps: list[dict[str, Any]] = [
        {"id": "prepare", "task": "fault.work"},
        {"id": "embed", "task": "fault.work", "group": "gpu", "depends_on": ["prepare"]},
        {"id": "store", "task": "fault.work", "depends_on": ["embed"]},
    ]
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("grouped", steps))
        run_id = await client.start("grouped", {"n": 1})

        def waiting_for_gpu() -> bool:
            shown = cli_json(procs, "run", "show", run_id, *url)
            return bool(shown.get("waiting_for_group") == {"embed": "gpu"})

        await wait_for(waiting_for_gpu, timeout_ms=wait_ms, what="embed waiting for group gpu")
        text = procs.cli("run", "show", run_id, *url).stdout
        assert "embed: waiting for worker group 'gpu'" in text, text
        assert procs.calls_of(run_id, "embed") == [], "the plain worker never takes it"

        gpu = grouped_worker(procs, serve.url, "gpu")

        async def completed() -> bool:
            return (await client.get_run(run_id)).status == "completed"

        await wait_for(completed, timeout_ms=wait_ms, what="the run to complete")
    by_step = {step: {c["pid"] for c in procs.calls_of(run_id, step)} for step in
               ("prepare", "embed", "store")}  # fmt: skip
    assert by_step == {"prepare": {plain.pid}, "embed": {gpu.pid}, "store": {plain.pid}}
    assert "waiting_for_group" not in cli_json(procs, "run", "show", run_id, *url)

    listed = cli_json(procs, "workers", "list", *url)
    groups = sorted((tuple(w["groups"]), tuple(w["task_types"])) for w in listed)
    types = ("fault.other", "fault.poison", "fault.work")
    assert groups == [((), types), (("gpu",), types)], listed
    assert all(w["live"] and w["concurrency"] == 32 and w["in_flight"] == 0 for w in listed)
    assert {w["user"] for w in listed} == {"worker"}

    gpu.popen.send_signal(signal.SIGTERM)
    assert await gpu.wait_exit() == 0
    after = cli_json(procs, "workers", "list", *url)
    assert [w["groups"] for w in after] == [[]], "a stopped worker leaves the directory"
