"""End to end, against a real `dagnats serve`: `dagnats run start NAME --inputs-file F`
(dagnats/cli/bulk_start.py): one run per line, all lines checked first (a bad line names its
number and nothing starts), idempotent per line or per `--key`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dagnats.client import Client
from tests.fault_support import Processes, connected, workflow
from tests.test_lifecycle_e2e import cli_json

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["order"],
    "properties": {"order": {"type": "integer"}},
}



async def runs_of(client: Client, name: str) -> dict[str, bytes]:
    """Run id -> input of every run of the workflow."""
    states = await client.list_runs(limit=1_000)
    return {
        s.run_id: bytes(s.input)
        for s in states
        if s.workflow is not None and s.workflow.name == name
    }


def jsonl(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_bulk_start_starts_one_run_per_line_once(procs: Processes, tmp_path: Path) -> None:
    serve = await procs.serve(tmp_path / "data", http=None)
    url = ("--nats-url", serve.url)
    async with connected(serve.url) as client:
        await client.register_workflow(
            workflow("orders", [{"id": "a", "task": "fault.work"}], input_schema=SCHEMA)
        )
        inputs = jsonl(tmp_path / "in.jsonl", '{"order": 1}', "", '{"order": 2}', '{"order": 3}')
        first = cli_json(procs, "run", "start", "orders", "--inputs-file", str(inputs), *url)
        assert [r["line"] for r in first["runs"]] == [1, 3, 4] and first["failed"] == 0
        started = await runs_of(client, "orders")
        assert set(started) == {r["run_id"] for r in first["runs"]}
        assert sorted(json.loads(v)["order"] for v in started.values()) == [1, 2, 3]

        again = cli_json(procs, "run", "start", "orders", "--inputs-file", str(inputs), *url)
        assert again["runs"] == first["runs"], "the same file names the same runs"
        assert await runs_of(client, "orders") == started, "and starts nothing new"

        keyed = jsonl(tmp_path / "keyed.jsonl", '{"order": 7}', '{"order": 8}')
        by_key = cli_json(
            procs, "run", "start", "orders", "--inputs-file", str(keyed), "--key", "order", *url
        )
        moved = jsonl(tmp_path / "moved.jsonl", '{"order": 8}', '{"order": 7}')
        by_key_again = cli_json(
            procs, "run", "start", "orders", "--inputs-file", str(moved), "--key", "order", *url
        )
        ids = {r["run_id"] for r in by_key["runs"]}
        assert {r["run_id"] for r in by_key_again["runs"]} == ids, "a key names its run"
        assert len(await runs_of(client, "orders")) == 5


async def test_bulk_start_is_all_or_nothing_naming_each_bad_line(
    procs: Processes, tmp_path: Path
) -> None:
    serve = await procs.serve(tmp_path / "data", http=None)
    url = ("--nats-url", serve.url)
    async with connected(serve.url) as client:
        await client.register_workflow(
            workflow("orders", [{"id": "a", "task": "fault.work"}], input_schema=SCHEMA)
        )
        bad = jsonl(tmp_path / "bad.jsonl", '{"order": 1}', '{"order": ', '{"order": "x"}')
        refused = procs.cli("run", "start", "orders", "--inputs-file", str(bad), *url)
        assert refused.returncode == 1, refused.stdout
        assert "2 problem(s)" in refused.stderr and "line 2" in refused.stderr
        assert "line 3: $.order" in refused.stderr and "nothing was started" in refused.stderr
        twice = jsonl(tmp_path / "twice.jsonl", '{"order": 1}', '{"order": 1}')
        dup = procs.cli(
            "run", "start", "orders", "--inputs-file", str(twice), "--key", "order", *url
        )
        assert dup.returncode == 1 and "line 2: --key 'order' is 1, as on line 1" in dup.stderr
        usage = procs.cli(
            "run", "start", "orders", "--inputs-file", str(twice), "--input", "{}", *url
        )
        assert usage.returncode == 2 and "--input cannot be used" in usage.stderr
        assert await runs_of(client, "orders") == {}
