"""`dagnats sim` of a workflow that mixes maps, a planner whose plan maps (with an on_failure
handler), a condition, a sleep and a compensation, every engine decision checked by
tests/decide_oracle.py (a full scan, the decoded state, no ready step left behind)."""

from __future__ import annotations

import zlib
from typing import Any

import pytest

import dagnats.runtime.engine
import kernel.batch
from dagnats import NonRetryableError, TaskContext, Worker
from dagnats.testing import simulate
from kernel.commands import AnyCommand
from kernel.decide import Folded, decide, decide_folded
from kernel.state import RunState
from tests.decide_oracle import oracle_decide

WORKFLOW: dict[str, Any] = {
    "name": "mix",
    "steps": [
        {"id": "fetch", "task": "mix.fetch"},
        {"id": "fan", "type": "map", "task": "mix.item", "depends_on": ["fetch"],
         "config": {"items_path": "items", "max_concurrency": 2}},
        {"id": "check", "task": "mix.item", "depends_on": ["fetch"],
         "skip_if": {"step_id": "fetch", "field": "flag", "op": "==", "value": True}},
        {"id": "nap", "type": "sleep", "depends_on": ["check"], "config": {"duration": "1s"}},
        {"id": "charge", "task": "mix.item", "depends_on": ["fan", "nap"], "compensate": "refund"},
        {"id": "plan", "type": "planner", "task": "mix.plan", "depends_on": ["fetch"],
         "on_failure": "fix", "config": {"max_steps": 8, "allowed_types": ["task", "map"]}},
        {"id": "final", "task": "mix.item", "depends_on": ["charge", "plan", "check"]},
        {"id": "refund", "task": "mix.handle"},
        {"id": "fix", "task": "mix.handle"},
    ],
}  # fmt: skip
PLAN: dict[str, Any] = {
    "steps": [
        {"id": "p0", "task": "mix.work"},
        {"id": "m", "type": "map", "task": "mix.item", "depends_on": ["p0"],
         "config": {"items_path": "items"}},
        {"id": "y", "task": "mix.item", "depends_on": ["p0"]},
        {"id": "z", "task": "mix.item", "depends_on": ["m", "y"]},
    ]
}  # fmt: skip


def _bit(ctx: TaskContext, salt: str) -> bool:
    """A coin of the run (the sim's runs of a seed differ by id): the same on every replay."""
    return zlib.crc32((ctx.run_id + salt).encode()) % 2 == 0


def _worker() -> Worker:
    worker = Worker(concurrency=8)

    @worker.task("mix.fetch")
    async def fetch(ctx: TaskContext) -> dict[str, Any]:
        return {"items": [1, 2, 3], "flag": _bit(ctx, "flag")}

    @worker.task("mix.item")
    async def item(ctx: TaskContext) -> dict[str, Any]:
        return {"n": 1}

    @worker.task("mix.work")
    async def work(ctx: TaskContext) -> dict[str, Any]:
        if _bit(ctx, "fail") and _bit(ctx, "fail-again") and ctx.attempt == 1:
            raise NonRetryableError("no")
        return {"items": [1, 2], "flag": False} if _bit(ctx, "items") else {"flag": False}

    @worker.task("mix.plan")
    async def plan(ctx: TaskContext) -> dict[str, Any]:
        return PLAN

    @worker.task("mix.handle")
    async def handle(ctx: TaskContext) -> dict[str, Any]:
        return {"handled": True}

    return worker


def test_every_decision_of_simulated_mixed_runs_is_the_full_scans(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked: list[int] = []
    checking = oracle_decide(decide, checked)

    def checking_folded(state: RunState, command: AnyCommand) -> Folded:
        checking(state, command)  # (the engine decides by decide_folded: decide's, folded)
        return decide_folded(state, command)

    monkeypatch.setattr(dagnats.runtime.engine, "decide_folded", checking_folded)
    monkeypatch.setattr(kernel.batch, "decide", checking)
    report = simulate(WORKFLOW, _worker(), seeds=10, runs=6)
    assert report.failures == [], report.failures
    assert len(checked) > 500, f"{len(checked)} decisions checked"
    assert report.statuses.get("completed", 0) > 0 and report.statuses.get("failed", 0) > 0
