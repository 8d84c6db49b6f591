"""`python -m bench`: run every bench in a subprocess of its own, then summarize.

Each bench module (`python -m bench.<name>`) prints one JSON line; this runner collects those
lines, prints a summary table (rich) with each bench's target where it has one, then the raw
lines. A bench that fails or times out prints its error and the others still run; the exit
code is 1 when any bench failed (a missed target is reported, not an error).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from rich.console import Console
from rich.table import Table

BENCH_DIR: Final = Path(__file__).resolve().parent
ORDER: Final = (
    "floor",
    "kernel_fold",
    "chain",
    "fanout",
    "map",
    "recovery",
    "throughput",
    "memory",
    "replay",
    "projection_rebuild",
    "sim",
    "observe_hooks",
)
BENCH_TIMEOUT_S: Final = 120.0
ERROR_LINES_MAX: Final = 15

Line = dict[str, object]


def _number(line: Line, key: str) -> float:
    value = line.get(key)
    return float(value) if isinstance(value, int | float) else float("nan")


@dataclass(frozen=True)
class Target:
    text: str
    met: Callable[[Line], bool]


TARGETS: Final = {
    "chain": Target("ratio <= 1.2", lambda line: _number(line, "ratio") <= 1.2),
    "throughput": Target(">= 5000 steps/s", lambda line: _number(line, "value") >= 5_000),
    "recovery": Target(
        "< 0.5 s, 0 rerun",
        lambda line: _number(line, "value") < 0.5 and line.get("steps_rerun") == 0,
    ),
    "memory": Target(
        "<= 300 MB @ 10k runs",
        lambda line: _number(line, "value") <= 300 and line.get("cache_within_bound") is True,
    ),
    "replay": Target(
        ">= 150k events/s, ratio >= 0.9",
        lambda line: _number(line, "value") >= 150_000 and _number(line, "ratio") >= 0.9,
    ),
    "projection_rebuild": Target(">= 50k events/s", lambda line: _number(line, "value") >= 50_000),
    "sim": Target(">= 1000 runs/s", lambda line: _number(line, "value") >= 1_000),
    "map": Target("10k items, ratio <= 2", lambda line: _number(line, "ratio") <= 2.0),
}


@dataclass(frozen=True)
class Outcome:
    name: str
    seconds: float
    line: Line | None
    error: str


def available() -> list[str]:
    return [name for name in ORDER if (BENCH_DIR / f"{name}.py").exists()]


def run_one(name: str) -> Outcome:
    """Run `python -m bench.<name>`; its last stdout line that is a JSON object is its line."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", f"bench.{name}"],
            cwd=BENCH_DIR.parent,
            capture_output=True,
            text=True,
            timeout=BENCH_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        seconds = time.perf_counter() - started
        return Outcome(name, seconds, None, f"timed out after {BENCH_TIMEOUT_S:.0f}s")
    seconds = time.perf_counter() - started
    line = _last_json_line(done.stdout)
    if done.returncode != 0 or line is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-ERROR_LINES_MAX:]
        reason = f"exit code {done.returncode}" if done.returncode else "no JSON line"
        return Outcome(name, seconds, None, "\n".join([reason, *tail]))
    return Outcome(name, seconds, line, "")


def _last_json_line(stdout: str) -> Line | None:
    for text in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and "bench" in value:
            return value
    return None


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1_000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def summary(outcomes: list[Outcome]) -> Table:
    table = Table(title="DagNats benchmarks")
    for column in ("bench", "value", "unit", "ratio", "target", "met", "time"):
        table.add_column(column, justify="right" if column in ("value", "ratio") else "left")
    for outcome in outcomes:
        line = outcome.line
        target = TARGETS.get(outcome.name)
        elapsed = f"{outcome.seconds:.1f}s"
        if line is None:
            shown = target.text if target else ""
            table.add_row(outcome.name, "-", "-", "-", shown, "[red]ERROR[/red]", elapsed)
            continue
        met = ""
        if target is not None:
            met = "[green]yes[/green]" if target.met(line) else "[red]no[/red]"
        table.add_row(
            outcome.name,
            _format(line.get("value")),
            str(line.get("unit", "")),
            _format(line.get("ratio")),
            target.text if target else "",
            met,
            elapsed,
        )
    return table


def main() -> int:
    console = Console()
    outcomes: list[Outcome] = []
    started = time.perf_counter()
    for name in available():
        console.print(f"[dim]running bench.{name} ...[/dim]")
        outcome = run_one(name)
        if outcome.error:
            console.print(f"[red]bench.{name} failed:[/red] {outcome.error}", highlight=False)
        outcomes.append(outcome)
    console.print(summary(outcomes))
    console.print(f"[dim]total {time.perf_counter() - started:.1f}s[/dim]")
    for outcome in outcomes:
        if outcome.line is not None:
            print(json.dumps(outcome.line, separators=(",", ":")))
    return 1 if any(outcome.line is None for outcome in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
