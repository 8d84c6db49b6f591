"""`python -m bench`: run every bench in a subprocess of its own, then summarize.

Each bench module (`python -m bench.<name>`) prints its JSON lines (one, or one per workload
for bench.peers); this runner collects them, prints a summary table (rich) with each line's
target where it has one and whether it was met, then the raw lines. `python -m bench NAME...`
runs only the benches named. A bench that fails or times out prints its error and the others
still run; the exit code is 1 when any bench failed (a missed target is reported, not an error).
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
    "chain",
    "peers",
    "floor",
    "kernel_fold",
    "chain_engine",
    "fanout",
    "map",
    "recovery",
    "restart",
    "throughput",
    "memory",
    "replay",
    "projection_rebuild",
    "sim",
    "http",
    "observe_hooks",
    "admission",
)
BENCH_TIMEOUT_S: Final = 120.0
BENCH_TIMEOUTS_S: Final = {
    "peers": 900.0, "memory": 600.0, "map": 400.0, "restart": 300.0, "sim": 600.0,
    "replay": 400.0, "throughput": 300.0, "chain": 300.0, "projection_rebuild": 300.0,
}  # fmt: skip (a shared machine: several of these took 2-4 min when it was busy)
ERROR_LINES_MAX: Final = 15

Line = dict[str, object]


def _number(line: Line, key: str) -> float:
    value = line.get(key)
    return float(value) if isinstance(value, int | float) else float("nan")


@dataclass(frozen=True)
class Target:
    text: str
    met: Callable[[Line], bool]


def _peer(line: Line, peer: str) -> float:
    return _number(line, f"ratio_to_{peer}")


TARGETS: Final = {
    "chain": Target(
        "documented path <= 1.5x floor hop; nats-server CPU <= 1.5x floor's; total CPU <= 2.5 ms",
        lambda line: (
            _number(line, "ratio") <= 1.5
            and _number(line, "nats_cpu_ratio") <= 1.5
            and _cpu_total(line) <= 2.5
        ),
    ),
    "peers.chain": Target("faster than LangGraph", lambda line: _peer(line, "langgraph") < 1.0),
    "peers.one_step": Target("<= LangGraph", lambda line: _peer(line, "langgraph") <= 1.0),
    "peers.fanout": Target(
        "<= 3x floor and <= LangGraph",
        lambda line: _number(line, "ratio") <= 3.0 and _peer(line, "langgraph") <= 1.0,
    ),
    "admission": Target("ratio <= 1.1", lambda line: _number(line, "ratio") <= 1.1),
    "chain_engine": Target("(microbench) ratio <= 1.2", lambda line: _number(line, "ratio") <= 1.2),
    "throughput": Target(
        ">= 5000 steps/s, projections on", lambda line: _number(line, "value") >= 5_000
    ),
    "recovery": Target(
        "< 0.5 s, 0 rerun",
        lambda line: _number(line, "value") < 0.5 and line.get("steps_rerun") == 0,
    ),
    "restart": Target(
        "decide <= 2 s, all resumed <= 10 s, cache in bound",
        lambda line: (
            _number(line, "decide_s") <= 2.0
            and _number(line, "value") <= 10.0
            and line.get("cache_within_bound") is True
        ),
    ),
    "memory": Target(
        "<= 500 MB @ 100k open runs",
        lambda line: _number(line, "value") <= 500 and line.get("cache_within_bound") is True,
    ),
    "replay": Target(
        ">= 150k events/s, ratio >= 0.9",
        lambda line: _number(line, "value") >= 150_000 and _number(line, "ratio") >= 0.9,
    ),
    "projection_rebuild": Target(">= 50k events/s", lambda line: _number(line, "value") >= 50_000),
    "sim": Target(
        ">= 1000 runs/s, order example", lambda line: _number(line, "value") >= 1_000
    ),
    "map": Target("<= 1.5x a fan-out of 10k tasks", lambda line: _number(line, "ratio") <= 1.5),
    "http": Target("bridge ratio <= 1.5", lambda line: _number(line, "ratio") <= 1.5),
}


def _cpu_total(line: Line) -> float:
    cpu = line.get("cpu_ms_per_step")
    return _number(cpu, "total") if isinstance(cpu, dict) else float("nan")


@dataclass(frozen=True)
class Outcome:
    name: str
    seconds: float
    lines: list[Line]
    error: str


def available() -> list[str]:
    return [name for name in ORDER if (BENCH_DIR / f"{name}.py").exists()]


def run_one(name: str) -> Outcome:
    """Run `python -m bench.<name>`; its stdout lines that are JSON objects with a `bench`
    key are its lines (most benches print one; bench.peers one per workload)."""
    started = time.perf_counter()
    timeout_s = BENCH_TIMEOUTS_S.get(name, BENCH_TIMEOUT_S)
    try:
        done = subprocess.run(
            [sys.executable, "-m", f"bench.{name}"],
            cwd=BENCH_DIR.parent,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        seconds = time.perf_counter() - started
        return Outcome(name, seconds, [], f"timed out after {timeout_s:.0f}s")
    seconds = time.perf_counter() - started
    lines = _json_lines(done.stdout)
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-ERROR_LINES_MAX:]
        reason = f"exit code {done.returncode}" if done.returncode else "no JSON line"
        return Outcome(name, seconds, [], "\n".join([reason, *tail]))
    return Outcome(name, seconds, lines, "")


def _json_lines(stdout: str) -> list[Line]:
    found: list[Line] = []
    for text in stdout.strip().splitlines():
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and "bench" in value:
            found.append(value)
    return found


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1_000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _target_of(line: Line) -> tuple[str, Target | None]:
    key = str(line.get("bench"))  # bench.peers: "peers.<workload>"
    return key, TARGETS.get(key)


def summary(outcomes: list[Outcome]) -> Table:
    """One row per bench line: its value, ratio, target and whether it was met."""
    table = Table(title="DagNats benchmarks")
    for column in ("bench", "value", "unit", "ratio", "target", "met", "time"):
        table.add_column(column, justify="right" if column in ("value", "ratio") else "left")
    for outcome in outcomes:
        elapsed = f"{outcome.seconds:.1f}s"
        if not outcome.lines:
            target = TARGETS.get(outcome.name)
            shown = target.text if target else ""
            table.add_row(outcome.name, "-", "-", "-", shown, "[red]ERROR[/red]", elapsed)
            continue
        for line in outcome.lines:
            key, target = _target_of(line)
            met = ""
            if target is not None:
                met = "[green]yes[/green]" if target.met(line) else "[red]no[/red]"
            table.add_row(
                key,
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
    chosen = sys.argv[1:] or available()
    unknown = [name for name in chosen if name not in available()]
    if unknown:
        console.print(f"[red]no bench named {', '.join(unknown)} (known: {available()})[/red]")
        return 2
    for name in chosen:
        console.print(f"[dim]running bench.{name} ...[/dim]")
        outcome = run_one(name)
        if outcome.error:
            console.print(f"[red]bench.{name} failed:[/red] {outcome.error}", highlight=False)
        outcomes.append(outcome)
    console.print(summary(outcomes))
    console.print(f"[dim]total {time.perf_counter() - started:.1f}s[/dim]")
    for outcome in outcomes:
        for line in outcome.lines:
            print(json.dumps(line, separators=(",", ":")))
    return 1 if any(not outcome.lines for outcome in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
