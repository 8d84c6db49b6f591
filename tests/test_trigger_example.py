"""The `examples/http_echo` endpoint as README "Triggers" shows it: a real `dagnats serve` and
`dagnats worker examples.http_echo.worker:worker`, the workflow registered with the CLI, then
POSTs: a valid body is answered 201 by the respond step while the run goes on to its slow
step; a body without a message fails the run first (500 `workflow_failed`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.api_support import assert_problem
from tests.fault_support import REPO_ROOT, Processes, dagnats_command
from tests.nats_fixtures import wait_for_sync

EXAMPLE = REPO_ROOT / "examples" / "http_echo" / "workflow.json"


def test_the_http_echo_example_answers_201_and_goes_on(tmp_path: Path) -> None:
    processes = Processes(tmp_path)
    try:
        serve = asyncio.run(processes.serve(tmp_path / "data"))
        argv = [*dagnats_command(), "worker", "examples.http_echo.worker:worker"]
        processes.start("echo-worker", [*argv, "--nats-url", serve.url])
        registered = processes.cli("workflow", "register", str(EXAMPLE), "--nats-url", serve.url)
        assert registered.returncode == 0, registered.stderr
        assert "warning" not in registered.stderr, registered.stderr
        with httpx.Client(base_url=serve.http_url, timeout=30.0) as http:
            response = http.post("/hooks/echo?lang=en", json={"message": "hello"})
            assert response.status_code == 201, response.text
            assert response.json() == {"echo": "hello", "method": "POST", "query": {"lang": "en"}}
            assert response.headers["cache-control"] == "no-store"
            run_id = response.headers["x-run-id"]

            def completed() -> bool:
                return bool(http.get(f"/v1/runs/{run_id}").json()["status"] == "completed")

            wait_for_sync(completed, timeout_ms=30_000, what=f"run {run_id} to complete")
            refused = http.post("/hooks/echo", json={"text": "no message"})
            assert_problem(refused, 500, field="run_id")
    finally:
        asyncio.run(processes.close())
