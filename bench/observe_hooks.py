"""Benchmark: what the engine's observability hooks cost per decision (dagnats/observe).

The decisions of RUNS runs of a 10-step chain whose every step fails once and succeeds on its
retry (built by `decide`, as in `bench.kernel_fold`) are passed through the hooks the engine
calls for each command (`EngineObserver.decision` around it, `appended` after its append), in
four set-ups: everything off (no OTLP endpoint, no metrics: the default outside serve),
metrics only (serve without a collector), tracing only (a batch span processor whose exporter
drops the spans: the OTLP path without the network), and both. Each is timed best of REPEATS.

Prints one JSON line: `value` is microseconds per decision with both on; `ratio` that over
the microseconds per decision of `evolve` on the same events (what the engine pays anyway,
without a single round trip); `off_us`, `metrics_us`, `tracing_us` the other set-ups.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from bench.common import emit, rounded
from bench.kernel_fold import build_run, chain_workflow
from dagnats.observe import tracing
from dagnats.observe.hooks import EngineObserver
from dagnats.observe.metrics import Metrics
from kernel.commands import AnyCommand
from kernel.events import AnyEvent
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState

RUNS: Final = 300
REPEATS: Final = 3
Step = tuple[AnyCommand, RunState, RunState, tuple[AnyEvent, ...]]


class DropSpans(SpanExporter):
    """An exporter that drops what it is given (the OTLP exporter without the network)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def decisions() -> list[Step]:
    steps: list[Step] = []
    workflow = chain_workflow()
    for index in range(RUNS):
        state = INITIAL_STATE
        for command, events in build_run(workflow, f"run-{index}", 1_000_000 + index):
            before = state
            for event in events:
                state = evolve(state, event)
            steps.append((command, before, state, events))
    return steps


def hooks(observer: EngineObserver, steps: list[Step]) -> Callable[[], object]:
    def work() -> None:
        for command, before, after, events in steps:
            with observer.decision(command) as seen:
                seen.outcome = "applied"
            observer.appended(before, after, events)

    return work


def folds(steps: list[Step]) -> Callable[[], object]:
    def work() -> None:
        for _, before, _, events in steps:
            state = before
            for event in events:
                state = evolve(state, event)

    return work


def best_us(work: Callable[[], object], count: int) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def main() -> None:
    steps = decisions()
    count = len(steps)
    tracing.configure(None)
    off = best_us(hooks(EngineObserver(), steps), count)
    metrics = best_us(hooks(EngineObserver(metrics=Metrics()), steps), count)
    traced = tracing.configure(DropSpans(), batch=True)
    assert traced is not None
    tracing_us = best_us(hooks(EngineObserver(tracing=traced), steps), count)
    both = best_us(hooks(EngineObserver(metrics=Metrics(), tracing=traced), steps), count)
    tracing.configure(None)
    fold_us = best_us(folds(steps), count)
    emit({
        "bench": "observe_hooks", "value": rounded(both, 2), "unit": "us/decision",
        "ratio": rounded(both / fold_us, 2), "off_us": rounded(off, 3),
        "metrics_us": rounded(metrics, 2), "tracing_us": rounded(tracing_us, 2),
        "evolve_us": rounded(fold_us, 2), "decisions": count,
    })  # fmt: skip


if __name__ == "__main__":
    main()
