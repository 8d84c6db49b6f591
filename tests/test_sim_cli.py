"""`dagnats sim`: a summary for passing seeds; for a failing one, the command that replays it,
which replays it exactly (`--seed N --trace`); `--json` for machines."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Final

import typer
from typer.testing import CliRunner

from dagnats.cli.sim import sim_command

ROOT: Final = Path(__file__).resolve().parent.parent
ORDER: Final = ROOT / "examples" / "order"
SLOW_WORKER: Final = """
from dagnats import RetryAfter, TaskContext, Worker

worker = Worker()


@worker.task("slow")
async def slow(context: TaskContext) -> None:
    raise RetryAfter(30 * 24 * 3600)  # a month, longer than the workflow's bound
"""
SLOW_WORKFLOW: Final = {
    "name": "slow",
    "steps": [{"id": "a", "task": "slow", "retry": {"max_attempts": 2}}],
}

app = typer.Typer()
app.command("sim")(sim_command)


@app.command("version")
def version() -> None:  # a second command, so typer keeps `sim` as a subcommand
    print("test")


runner = CliRunner()


def order_args(*extra: str) -> list[str]:
    return [
        "sim",
        str(ORDER / "workflow.json"),
        "--worker",
        "examples.order.worker:worker",
        "--input-file",
        str(ORDER / "input.json"),
        *extra,
    ]


def test_passing_seeds_print_a_summary_and_exit_0() -> None:
    result = runner.invoke(app, order_args("--seeds", "30"))
    assert result.exit_code == 0, result.output
    assert "seeds" in result.output and "30" in result.output
    assert "faults injected" in result.output and "failing seeds" in result.output


def test_json_output_is_one_object() -> None:
    result = runner.invoke(app, order_args("--seeds", "20", "--json"))
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout)
    assert line["ok"] is True and line["seeds"] == 20 and line["runs"] == 20
    assert isinstance(line["faults"], dict) and line["failures"] == []
    assert {"projections_equal_rebuild", "snapshots_equal_fold"} <= set(line["invariants"])
    assert line["projection_batches"] > 20, line["projection_batches"]


def test_a_failing_seed_prints_its_reproduction_which_replays_it(tmp_path: Path) -> None:
    worker_file = tmp_path / "slow_worker.py"
    worker_file.write_text(SLOW_WORKER, encoding="utf-8")
    workflow_file = tmp_path / "slow.json"
    workflow_file.write_text(json.dumps(SLOW_WORKFLOW), encoding="utf-8")
    spec = f"{worker_file}:worker"
    result = runner.invoke(app, ["sim", str(workflow_file), "--worker", spec, "--seeds", "5"])
    assert result.exit_code == 1, result.output
    assert "run_ends_in_bound" in result.output
    lines = [line for line in result.output.splitlines() if "reproduce:" in line]
    assert len(lines) == 1, result.output
    command = shlex.split(lines[0].split("reproduce:", 1)[1])
    assert command[:2] == ["dagnats", "sim"] and "--seed" in command and "--trace" in command
    replay = runner.invoke(app, command[1:])
    assert replay.exit_code == 1, replay.output
    assert "run_ends_in_bound" in replay.output
    assert "appends #1 to run-1: StartRun" in replay.output  # the whole trace
    again = runner.invoke(app, command[1:])
    assert again.output == replay.output  # exactly the same seed, twice


def test_bad_input_is_one_line_and_exit_1() -> None:
    result = runner.invoke(app, order_args("--faults", "crashes=0.5"))
    assert result.exit_code == 1
    assert "crashes=0.5" in result.output and "kinds:" in result.output
    missing = runner.invoke(
        app, ["sim", str(ORDER / "workflow.json"), "--worker", "examples.order.worker:nope"]
    )
    assert missing.exit_code != 0
