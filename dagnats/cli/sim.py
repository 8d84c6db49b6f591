"""`dagnats sim`: simulate a workflow with its real handlers over many seeds, or replay one.

Wired into the `dagnats` command by `dagnats/cli/__init__`. The workflow file is parsed as
`dagnats workflow validate` does; the worker is loaded as `dagnats worker` does
(`MODULE:ATTR`, a module path or a .py file). A failing seed prints the command that replays
it and the end of its trace; `--seed N --trace` replays one seed and prints its whole trace.
Exit code 0 when every seed passed, 1 when one failed or the input is wrong.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dagnats.cli.common import err, fail, load_worker, out
from dagnats.sim import settings
from dagnats.sim.case import SeedResult, SimCase
from dagnats.sim.faults import FaultPlan
from dagnats.sim.invariants import INVARIANTS
from dagnats.sim.runner import (
    JOBS_MAX,
    SimReport,
    failure_text,
    run_bound_ms,
    run_seed,
    run_seeds,
)
from kernel.errors import WorkflowInvalidError
from kernel.workflow import WorkflowDef, parse_workflow


def _load_workflow(file: Path) -> WorkflowDef:
    try:
        data = file.read_bytes()
    except OSError as error:
        raise fail(f"{file}: {error.strerror}", "pass a readable workflow file") from None
    try:
        return parse_workflow(data)
    except WorkflowInvalidError as error:
        for problem in error.problems:
            err.print(f"  {problem}", highlight=False, soft_wrap=True)
        problems = len(error.problems)
        raise fail(f"{file}: {problems} problem(s)", "fix the fields listed above") from None


def _input_bytes(text: str | None, file: Path | None) -> bytes:
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as error:
            raise fail(f"input-file {file}: {error.strerror}", "pass a readable file") from None
    if text is None:
        return b"null"
    try:
        return msgspec.json.encode(json.loads(text))
    except json.JSONDecodeError as error:
        raise fail(f"input is not valid JSON: {error}", "e.g. --input '{\"key\": 1}'") from None


def reproduce_command(
    file: Path, worker: str, seed: int, faults: str, runs: int, input_args: list[str]
) -> str:
    """The command line that replays one seed exactly, with its trace."""
    parts = ["dagnats", "sim", str(file), "--worker", worker, "--seed", str(seed), "--trace"]
    if faults != "default":
        parts += ["--faults", faults]
    if runs != 1:
        parts += ["--runs", str(runs)]
    return shlex.join(parts + input_args)


def _duration(ms: int) -> str:
    seconds = ms / 1000
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def _summary(report: SimReport, bound_ms: int) -> Table:
    table = Table(title="simulation", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    rate = report.seeds / report.elapsed_s if report.elapsed_s > 0 else 0.0
    table.add_row("seeds", f"{report.seeds} ({rate:.0f}/s)")
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(report.statuses.items()))
    table.add_row("runs", f"{report.runs} ({statuses})")
    table.add_row(
        "virtual time", f"{_duration(report.virtual_ms)} (bound per run {_duration(bound_ms)})"
    )
    table.add_row("scheduler steps", str(report.steps))
    batches = f"{report.projection_batches} (and a check against a rebuild per seed)"
    table.add_row("projection batches", batches)
    faults = "\n".join(f"{name} {count}" for name, count in sorted(report.faults.items()))
    table.add_row("faults injected", faults or "none")
    table.add_row("failing seeds", str(len(report.failures)))
    return table


def _report_json(report: SimReport, reproduce: dict[int, str], trace: bool) -> dict[str, Any]:
    def seed_json(result: SeedResult) -> dict[str, Any]:
        lines = result.trace if trace else result.trace[-settings.trace_lines_max :]
        return {
            "seed": result.seed,
            "violations": msgspec.to_builtins(result.violations),
            "faults": result.faults,
            "runs": result.runs,
            "virtual_ms": result.virtual_ms,
            "steps": result.steps,
            "digest": result.digest,
            "reproduce": reproduce.get(result.seed, ""),
            "trace": list(lines),
        }

    return {
        "ok": report.ok,
        "seeds": report.seeds,
        "runs": report.runs,
        "statuses": report.statuses,
        "steps": report.steps,
        "virtual_ms": report.virtual_ms,
        "elapsed_s": round(report.elapsed_s, 3),
        "faults": dict(sorted(report.faults.items())),
        "invariants": list(INVARIANTS),
        "projection_batches": report.projection_batches,
        "failures": [seed_json(result) for result in report.failures],
    }


def _fault_plan(faults: str) -> FaultPlan:
    try:
        return FaultPlan.parse(faults)
    except ValueError as error:
        raise fail(str(error), "e.g. --faults engine_crash=0.05,late_delivery=0") from None


def _check_counts(runs: int, jobs: int, seeds: int) -> None:
    """Each count option within its bound, checked in the order the options are read."""
    if not 1 <= runs <= settings.runs_per_seed_max:
        raise fail(f"--runs {runs} must be within 1..{settings.runs_per_seed_max}")
    if not 1 <= jobs <= JOBS_MAX:
        raise fail(f"--jobs {jobs} must be within 1..{JOBS_MAX}")
    if not 1 <= seeds <= settings.seeds_per_call_max:
        raise fail(f"--seeds {seeds} must be within 1..{settings.seeds_per_call_max}")


def sim_command(
    workflow_file: Annotated[Path, typer.Argument(help="The workflow file (JSON).")],
    worker: Annotated[
        str, typer.Option("--worker", "-w", help="MODULE:ATTR of the dagnats.Worker to run.")
    ],
    seeds: Annotated[int, typer.Option("--seeds", help="How many seeds to simulate.")] = 100,
    first_seed: Annotated[int, typer.Option("--first-seed", help="The first seed.")] = 0,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Simulate this one seed (a replay).")
    ] = None,
    trace: Annotated[
        bool, typer.Option("--trace", help="Print the whole trace of the seed (with --seed).")
    ] = False,
    faults: Annotated[
        str,
        typer.Option("--faults", help="Fault probabilities: none, default, KIND=P,... (see docs)."),
    ] = "default",
    runs: Annotated[int, typer.Option("--runs", help="Runs the client starts per seed.")] = 1,
    input_text: Annotated[str | None, typer.Option("--input", help="Run input (JSON).")] = None,
    input_file: Annotated[
        Path | None, typer.Option("--input-file", help="Run input from a JSON file.")
    ] = None,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", help="Processes to spread the seeds over.")
    ] = 1,
    keep_going: Annotated[
        bool, typer.Option("--keep-going", help="Do not stop at the first failing seed.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Simulate WORKFLOW_FILE with the worker's real handlers under seeded faults."""
    workflow = _load_workflow(workflow_file)
    user_worker = load_worker(worker)
    plan = _fault_plan(faults)
    _check_counts(runs, jobs, seeds)
    input_args = ["--input", input_text] if input_text is not None else []
    input_args += ["--input-file", str(input_file)] if input_file is not None else []
    try:
        case = SimCase(
            workflow=workflow,
            worker=user_worker,
            input=_input_bytes(input_text, input_file),
            faults=plan,
            runs=runs,
        )
    except ValueError as error:
        raise fail(str(error), "register a handler for every task of the workflow") from None
    bound_ms = run_bound_ms(workflow)

    def reproduce(result: SeedResult) -> str:
        spec = plan.spec()
        return reproduce_command(workflow_file, worker, result.seed, spec, runs, input_args)

    if seed is not None:
        _replay(case, seed, trace, as_json, reproduce)
        return
    seed_range = range(first_seed, first_seed + seeds)
    failures_max = seeds if keep_going else 1
    if as_json:
        report = run_seeds(case, seed_range, failures_max=failures_max, jobs=jobs)
    else:
        report = _run_with_progress(case, seed_range, failures_max, jobs)
    reproductions = {result.seed: reproduce(result) for result in report.failures}
    _print_report(report, reproductions, bound_ms, as_json)
    if not report.ok:
        raise typer.Exit(1)


def _print_report(
    report: SimReport, reproductions: dict[int, str], bound_ms: int, as_json: bool
) -> None:
    if as_json:
        print(json.dumps(_report_json(report, reproductions, trace=False)))
        return
    out.print(_summary(report, bound_ms))
    for result in report.failures:
        text = failure_text(result, reproductions[result.seed], settings.trace_lines_max)
        out.print(text, highlight=False, markup=False, soft_wrap=True)


def _run_with_progress(case: SimCase, seed_range: range, failures_max: int, jobs: int) -> SimReport:
    columns = (
        TextColumn("[bold]sim[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("seeds"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[failed]} failing"),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("seeds", total=len(seed_range), failed=0)
        failed = 0

        def advance(result: SeedResult) -> None:
            nonlocal failed
            failed += 0 if result.ok else 1
            progress.update(task, advance=1, failed=failed)

        return run_seeds(case, seed_range, on_result=advance, failures_max=failures_max, jobs=jobs)


def _replay(case: SimCase, seed: int, trace: bool, as_json: bool, reproduce: Any) -> None:
    result = run_seed(case, seed, keep_trace=True)
    report = SimReport()
    report.add(result)
    if as_json:
        line = _report_json(report, {seed: reproduce(result)}, trace=trace)
        line["seed"] = msgspec.to_builtins(
            {"seed": seed, "runs": result.runs, "faults": result.faults, "digest": result.digest}
        )
        if trace:
            line["trace"] = list(result.trace)
        print(json.dumps(line))
    else:
        if trace:
            for text in result.trace:
                out.print(text, highlight=False, markup=False, soft_wrap=True)
        statuses = ", ".join(f"{run} {status}" for run, status in result.runs.items())
        out.print(
            f"seed {seed}: {'ok' if result.ok else 'FAILED'} — {statuses}; "
            f"{result.steps} steps, {_duration(result.virtual_ms)} virtual; "
            f"history digest {result.digest}",
            highlight=False,
            markup=False,
        )
        if not result.ok:
            text = failure_text(result, reproduce(result), 0 if trace else settings.trace_lines_max)
            out.print(text, highlight=False, markup=False, soft_wrap=True)
    if not result.ok:
        raise typer.Exit(1)
