"""The example HTTP workers (examples/http_worker/: bash + curl, and Node.js with its fetch)
complete the example workflow against a real `dagnats serve` (its HTTP API behind a bearer
token, its bridge), each retrying the first attempt of its step (it fails retryably), each
result recorded once.

serve and the workers are real processes (tests/fault_support.Processes), killed by pid at
the end.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import httpx
import pytest

from dagnats.client import Client
from kernel.events import StepCompleted, StepFailed
from tests.fault_support import REPO_ROOT, Processes, connected, decisions_of, events_of

EXAMPLE = REPO_ROOT / "examples" / "http_worker"
WAIT_S = 60.0
TOKEN = "example-token-0123456789"



def needs(*programs: str) -> None:
    missing = [program for program in programs if shutil.which(program) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH")


async def test_the_shell_and_node_workers_complete_the_example_with_retries(
    tmp_path: Path, procs: Processes
) -> None:
    needs("bash", "curl", "node")
    procs.extra_env = {"DAGNATS_API_TOKEN": TOKEN}
    serve = await procs.serve(tmp_path / "data")
    env = {"DAGNATS_HTTP_URL": serve.http_url, "DAGNATS_API_TOKEN": TOKEN}
    shell = procs.start("worker-sh", ["env", *_pairs(env), "bash", str(EXAMPLE / "worker.sh")])
    node = procs.start("worker-mjs", ["env", *_pairs(env), "node", str(EXAMPLE / "worker.mjs")])
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=serve.http_url, headers=headers, timeout=WAIT_S) as http:
        document = (EXAMPLE / "workflow.json").read_bytes()
        registered = await http.post("/v1/workflows", content=document)
        assert registered.status_code == 201, registered.text
        started = await http.post("/v1/runs", json={"workflow": "http_greeting",
                                                    "input": {"name": "ada"}})  # fmt: skip
        assert started.status_code == 201, started.text
        run_id = started.json()["run_id"]
        waited = await http.get(f"/v1/runs/{run_id}/wait", params={"timeout_s": WAIT_S})
        anonymous = await http.get("/v1/workflows", headers={"Authorization": ""})
        assert anonymous.status_code == 401, anonymous.text  # the token is in force
    run = waited.json()["run"]
    assert run["status"] == "completed", (run, procs.report())
    assert run["output"] == {"shout": "HELLO ADA!"}, run
    async with connected(serve.url) as client:
        await _check_history(client, run_id)
    assert shell.alive() and node.alive(), procs.report()
    assert "attempt 2: hello ada" in shell.stderr(), shell.tail()
    assert "attempt 2: HELLO ADA!" in node.stderr(), node.tail()


async def _check_history(client: Client, run_id: str) -> None:
    events = events_of(await decisions_of(client, run_id))
    failed = [(e.step_id, e.attempt, e.error.kind) for e in events if isinstance(e, StepFailed)]
    assert failed == [("greet", 1, "error"), ("shout", 1, "error")]
    completed = Counter((e.step_id, e.attempt) for e in events if isinstance(e, StepCompleted))
    assert completed == Counter({("greet", 2): 1, ("shout", 2): 1})


def _pairs(env: dict[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in env.items()]
