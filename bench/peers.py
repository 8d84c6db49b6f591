"""`python -m bench.peers`: DagNats side by side with its peers and the raw JetStream floor.

Four workloads, each on four systems, interleaved in ROUNDS rounds (floor, DagNats,
LangGraph, DBOS in every round), the median of the rounds per workload:

| workload | value |
| --- | --- |
| chain | a 10-step chain of no-op steps, one run at a time: ms per step |
| one_step | a 1-step workflow, start to result: the median ms of a run |
| fanout | 100 parallel no-op steps and a join: the median s of a run |
| resume | a 10-step chain whose step 5 blocks; the engine (and worker) SIGKILLed there, |
|        | then restarted: s from the restart to the result |

The systems: `floor` (`bench.peers_floor`, bare JetStream hops), `dagnats` (the documented
path: `dagnats serve` + `dagnats worker` + `Client.start`/`Client.wait`, `bench.peers_dagnats`),
`langgraph` (SQLite checkpointer) and `dbos` (SQLite), each peer in a process of its own
(`bench.peers_langgraph`, `bench.peers_dbos`); a peer that is not installed
(`pip install -e '.[bench]'`) is reported as skipped. Prints one JSON line per workload
(`value` and `ratio` are DagNats' and DagNats / floor; every system's median, DagNats' ratio to
each peer, CPU per step of each process, JetStream API requests and stored messages per step;
see `bench.metrics`), then a side-by-side table. Each workload and each child process is
bounded in time; a failing system is reported as an error in its cell, the others still run.

This module may start processes and write only inside temporary directories.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from rich.console import Console
from rich.table import Table

from bench import peers_dagnats, peers_floor
from bench.common import REPO_ROOT, emit, rounded
from bench.peer_child import REACHED_FILE

ROUNDS: Final = 3
SYSTEMS: Final = ("floor", "dagnats", "langgraph", "dbos")
PEERS: Final = ("langgraph", "dbos")
WORKLOADS: Final = {
    "chain": ("10-step chain", "ms/step"),
    "one_step": ("1-step workflow, start to result", "ms"),
    "fanout": ("fan-out 100 + join", "s"),
    "resume": ("resume after SIGKILL", "s"),
}
ROUND_TIMEOUT_S: Final = 120.0
CHILD_TIMEOUT_S: Final = 90.0
REACHED_TIMEOUT_S: Final = 30.0
POLL_S: Final = 0.005
TABLE_WIDTH: Final = 150

Result = dict[str, object]
RoundResults = dict[str, Result]  # workload -> {"value": ..., ...}


class SkippedError(Exception):
    """A peer is not installed."""


async def _child_lines(command: list[str], timeout_s: float) -> list[Result]:
    process = await asyncio.create_subprocess_exec(
        *command, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise TimeoutError(f"{' '.join(command[2:4])}: no answer in {timeout_s}s") from None
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    if any(line.get("kind") == "skipped" for line in lines):
        raise SkippedError(str(lines[0].get("reason")))
    if process.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(command[2:4])} exited {process.returncode}: {tail}")
    return lines


async def peer_resume(peer: str, directory: Path) -> float:
    """resume-start until it reaches the blocking step, SIGKILL it, time resume-finish."""
    module = [sys.executable, "-m", f"bench.peers_{peer}"]
    starting = await asyncio.create_subprocess_exec(
        *module, "resume-start", "--dir", str(directory), cwd=REPO_ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + REACHED_TIMEOUT_S
        while not (directory / REACHED_FILE).exists():
            assert starting.returncode is None, f"{peer} resume-start exited early"
            assert time.monotonic() < deadline, f"{peer} did not reach the blocking step"
            await asyncio.sleep(POLL_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            starting.send_signal(signal.SIGKILL)
        await starting.wait()
    started = time.perf_counter()
    finish = [*module, "resume-finish", "--dir", str(directory)]
    lines = await _child_lines(finish, CHILD_TIMEOUT_S)
    assert any(line.get("done") for line in lines), f"{peer} did not finish: {lines}"
    return time.perf_counter() - started


async def peer_round(peer: str) -> RoundResults:
    with tempfile.TemporaryDirectory(prefix=f"dagnats-bench-{peer}-") as directory:
        command = [sys.executable, "-m", f"bench.peers_{peer}", "workloads", "--dir", directory]
        lines = await _child_lines(command, CHILD_TIMEOUT_S)
        results: RoundResults = {str(line.pop("workload")): line for line in lines}
    with tempfile.TemporaryDirectory(prefix=f"dagnats-bench-{peer}-resume-") as directory:
        results["resume"] = {"value": await peer_resume(peer, Path(directory))}
    return results


async def floor_round() -> RoundResults:
    with tempfile.TemporaryDirectory(prefix="dagnats-bench-peers-floor-") as directory:
        return await peers_floor.round_(Path(directory))


RUNNERS: Final[dict[str, Callable[[], Awaitable[RoundResults]]]] = {
    "floor": floor_round,
    "dagnats": peers_dagnats.round_,
    "langgraph": lambda: peer_round("langgraph"),
    "dbos": lambda: peer_round("dbos"),
}


async def run_rounds(console: Console) -> tuple[dict[str, list[RoundResults]], dict[str, str]]:
    """Every system once per round; systems skipped or failing are noted, not raised."""
    measured: dict[str, list[RoundResults]] = {system: [] for system in SYSTEMS}
    problems: dict[str, str] = {}
    for index in range(ROUNDS):
        for system in SYSTEMS:
            if system in problems:
                continue
            console.print(f"[dim]round {index + 1}/{ROUNDS}: {system} ...[/dim]")
            try:
                result = await asyncio.wait_for(RUNNERS[system](), ROUND_TIMEOUT_S)
            except SkippedError as skipped:
                problems[system] = f"skipped ({skipped})"
                continue
            except Exception as error:
                problems[system] = f"error: {type(error).__name__}: {error}"[:300]
                console.print(f"[red]{system}: {problems[system]}[/red]", highlight=False)
                continue
            measured[system].append(result)
    return measured, problems


def median_of(rounds: list[RoundResults], workload: str) -> float | None:
    values = [float(str(r[workload]["value"])) for r in rounds if workload in r]
    return statistics.median(values) if values else None


def first_extras(rounds: list[RoundResults], workload: str) -> Result:
    """The per-step fields (CPU, JetStream) of the round with the median value."""
    found = [r[workload] for r in rounds if workload in r]
    if not found:
        return {}
    found.sort(key=lambda item: float(str(item["value"])))
    middle = found[len(found) // 2]
    return {key: value for key, value in middle.items() if key != "value"}


def ratio(a: float | None, b: float | None) -> float | None:
    return rounded(a / b, 3) if a is not None and b else None


def workload_line(workload: str, measured: dict[str, list[RoundResults]],
                  problems: dict[str, str]) -> Result:  # fmt: skip
    title, unit = WORKLOADS[workload]
    medians = {system: median_of(measured[system], workload) for system in SYSTEMS}
    dagnats, floor = medians["dagnats"], medians["floor"]
    line: Result = {
        "bench": f"peers.{workload}",
        "value": rounded(dagnats, 4) if dagnats is not None else None,
        "unit": unit,
        "ratio": ratio(dagnats, floor),
        "ratio_of": "DagNats / floor (median of rounds, same run)",
        "workload": title,
        "rounds": ROUNDS,
    }
    for system in SYSTEMS:
        value = medians[system]
        line[system] = rounded(value, 4) if value is not None else problems.get(system, "-")
    for peer in PEERS:
        line[f"ratio_to_{peer}"] = ratio(dagnats, medians[peer])
    line["per_step"] = {system: first_extras(measured[system], workload) for system in SYSTEMS}
    return line


def table(lines: list[Result]) -> Table:
    shown = Table(title=f"DagNats and its peers (median of {ROUNDS} rounds)")
    for column in ("workload", "unit", *SYSTEMS, "DagNats / floor", "/ LangGraph", "/ DBOS"):
        shown.add_column(column, justify="left" if column in ("workload", "unit") else "right")
    for line in lines:
        cells = []
        for key in (*SYSTEMS, "ratio", "ratio_to_langgraph", "ratio_to_dbos"):
            value = line.get(key)
            cells.append(f"{value:.4g}" if isinstance(value, float) else str(value or "-")[:24])
        shown.add_row(str(line["workload"]), str(line["unit"]), *cells)
    return shown


async def main() -> int:
    console = Console(stderr=True)
    started = time.perf_counter()
    measured, problems = await run_rounds(console)
    lines = [workload_line(workload, measured, problems) for workload in WORKLOADS]
    for line in lines:
        emit(line)
    Console(width=TABLE_WIDTH).print(table(lines))
    for system, problem in problems.items():
        console.print(f"{system}: {problem}", highlight=False)
    console.print(f"[dim]total {time.perf_counter() - started:.1f}s[/dim]")
    return 1 if any(p.startswith("error") for p in problems.values()) else 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
