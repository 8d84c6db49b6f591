"""Where `bench.recovery`'s restart-to-done time goes, phase by phase.

One kill-and-restart of `bench.recovery` (the worker as `dagnats worker` connects), with the
restarted serve and the worker traced (`bench.startup_trace`): each phase's start and end in
seconds from the restart (the bench's clock start, just before serve's exec), beside every
append of the run (the server's timestamp) and every handler call after it. Informative, not
a target: `python -m bench.recovery_phases` prints one JSON line (`value`: restart-to-done s)
and, on stderr, the timeline one line each.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

from bench.common import emit, rounded
from bench.recovery import scenario


def timeline(trace: Path, restarted_at: float) -> list[tuple[float, str]]:
    """The trace's marks after the restart, as (seconds from it, "process phase")."""
    marks: list[tuple[float, str]] = []
    for line in trace.read_text(encoding="utf-8").splitlines():
        mark = json.loads(line)
        if mark["at"] >= restarted_at:
            marks.append((mark["at"] - restarted_at, f"{mark['process']} {mark['phase']}"))
    return marks


async def measure() -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="dagnats-bench-phases-") as directory:
        trace = Path(directory) / "trace.jsonl"
        result = await scenario(trace)
        restarted_at = result["restarted_at"]
        assert isinstance(restarted_at, float)
        marks = timeline(trace, restarted_at)
    since = result["since_restart"]
    assert isinstance(since, list)
    events = sorted([*marks, *since])
    for at, what in events:
        print(f"{at * 1000:8.1f} ms  {what}", file=sys.stderr)
    done_s = result["done_s"]
    assert isinstance(done_s, float)
    return {
        "bench": "recovery_phases",
        "value": rounded(done_s, 3),
        "unit": "s",
        "ratio": 1.0,
        "ratio_of": "informative (the timeline is on stderr)",
        "steps_rerun": result["steps_rerun"],
        "phases_ms": {what: rounded(at * 1000, 1) for at, what in events},
    }


def main() -> None:
    emit(asyncio.run(measure()))


if __name__ == "__main__":
    main()
