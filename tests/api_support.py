"""Helpers of the HTTP API tests: a real `dagnats serve` (its HTTP API on a free loopback
port) and a worker of tests.fault_workers, started once per test module, an httpx client that
records every (method, path) it sent (so a test can check every OpenAPI route was exercised),
and the check of a problem body.

Processes are started and killed by pid through tests.fault_support.Processes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx

from tests.fault_support import Processes, Serve
from tests.nats_fixtures import wait_for_sync

http_timeout_s: Final = 30.0
health_wait_ms: Final = 20_000

ONE_STEP: Final = {"name": "api-one", "version": "1", "steps": [{"id": "a", "task": "fault.work"}]}
APPROVAL: Final = {
    "name": "api-approval", "version": "1",
    "steps": [
        {"id": "gate", "type": "approval", "config": {"question": "Ship it?"}},
        {"id": "ship", "task": "fault.work", "depends_on": ["gate"]},
    ],
}  # fmt: skip
SIGNAL: Final = {
    "name": "api-signal", "version": "1",
    "steps": [
        {"id": "wait", "type": "wait_signal", "config": {"signal": "go"}},
        {"id": "after", "task": "fault.work", "depends_on": ["wait"]},
    ],
}  # fmt: skip


class Recorder:
    """The (method, path) of every request sent through clients it hooked."""

    def __init__(self) -> None:
        self.sent: set[tuple[str, str]] = set()

    def hook(self, request: httpx.Request) -> None:
        self.sent.add((request.method, request.url.path))


class Stack:
    """A serve with its HTTP API and a worker; `http` is a client of the API."""

    def __init__(self, processes: Processes, serve: Serve, recorder: Recorder) -> None:
        self.processes = processes
        self.serve = serve
        self.recorder = recorder
        self.base = serve.http_url
        self.http = self.client()

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(
            base_url=self.base, timeout=http_timeout_s, headers=headers,
            event_hooks={"request": [self.recorder.hook]},
        )  # fmt: skip

    def wait_healthy(self) -> None:
        def healthy() -> bool:
            return self.http.get("/health").status_code == 200

        wait_for_sync(healthy, timeout_ms=health_wait_ms, what="GET /health to say ok")


def start_stack(
    tmp: Path, recorder: Recorder, *, env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (), worker: bool = True,
) -> Iterator[Stack]:  # fmt: skip
    """Start serve (+ a worker), yield the stack, kill them all at the end."""
    processes = Processes(tmp)
    processes.extra_env = dict(env or {})
    try:
        serve = asyncio.run(processes.serve(tmp / "data", extra_args=extra_args))
        assert serve.http_url.startswith("http://127.0.0.1:"), serve.info
        if worker:
            processes.cli_worker(serve.url)
        stack = Stack(processes, serve, recorder)
        yield stack
        stack.http.close()
    finally:
        asyncio.run(processes.close())


def assert_problem(
    response: httpx.Response, status: int, *, detail_has: str = "", field: str | None = None
) -> dict[str, Any]:
    """The response is a problem+json of `status` naming what it must; returns the body."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = json.loads(response.content)
    for key in ("type", "title", "status", "detail"):
        assert key in body, (key, body)
    assert body["status"] == status, body
    assert body["type"].startswith("urn:dagnats:problem:"), body
    assert "\n" not in body["detail"], body
    if detail_has:
        assert detail_has in body["detail"], (detail_has, body)
    if field is not None:
        assert body.get("field") == field, (field, body)
    return body
