"""Run seeds: one event loop for many seeds, a report over all of them, failure text.

`run_seeds(case, seeds)` simulates each seed of a `SimCase` and sums what happened (runs,
faults by kind, virtual time covered); it stops after `failures_max` failing seeds. Each
seed's bound of virtual time per run is computed from the workflow (`run_bound_ms`,
dagnats/sim/bounds.py) unless the case names one; each run's lost attempts extend it.
Logging of the engine and the worker is quieted while seeds run (a crash is their daily bread
here); each seed's own trace says what happened.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

import msgspec

from dagnats.sim import settings
from dagnats.sim.bounds import run_bound_ms
from dagnats.sim.case import SeedResult, SimCase
from dagnats.sim.faults import SimulatedCrash
from dagnats.sim.loop import SimLoop
from dagnats.sim.scheduler import Simulation
from dagnats.sim.shared import case_shared

QUIET_LOGGERS: Final = ("dagnats.engine", "dagnats.worker", "dagnats.task", "asyncio")
JOBS_MAX: Final = 64  # processes one call may spread its seeds over
SEEDS_PER_CHUNK: Final = 100  # seeds a process simulates per hand-out (with jobs > 1)
# Young-generation collections while seeds run: a seed makes many short-lived containers
# (tasks, futures, structs), few cycles; collecting every 700 allocations cost ~15% of the time.
# Each seed's world (its simulation, processes, ports, tasks) ends as garbage held in cycles:
# the timers it left on the loop are dropped (they held every world to the end of the call:
# ~130 MB after 1,000 seeds, and a gen-1 collection of ~0.2 s), and it is collected young right
# after its seed (~0.1 ms), not promoted half-dead by a collection inside a later seed; so no
# seed's collections depend on the seeds run before it.
GC_YOUNG_THRESHOLD: Final = 50_000


class SimReport(msgspec.Struct, kw_only=True):
    """What a batch of seeds covered, and the seeds that failed."""

    seeds: int = 0
    runs: int = 0
    steps: int = 0
    projection_batches: int = 0
    decodes: int = 0  # history messages the oracles decoded
    folds: int = 0  # events the oracles folded
    virtual_ms: int = 0
    elapsed_s: float = 0.0
    faults: dict[str, int] = msgspec.field(default_factory=dict)
    statuses: dict[str, int] = msgspec.field(default_factory=dict)
    failures: list[SeedResult] = msgspec.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def add(self, result: SeedResult) -> None:
        self.seeds += 1
        self.runs += len(result.runs)
        self.steps += result.steps
        self.projection_batches += result.projection_batches
        self.decodes += result.decodes
        self.folds += result.folds
        self.virtual_ms += result.virtual_ms
        for name, count in result.faults.items():
            self.faults[name] = self.faults.get(name, 0) + count
        for status in result.runs.values():
            self.statuses[status] = self.statuses.get(status, 0) + 1
        if not result.ok:
            self.failures.append(result)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Mute the engine's, the worker's and asyncio's logs (a crash is their daily bread here)."""
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Raise the cyclic GC's young-generation threshold while seeds run, and leave what lived
    before them (modules, the case) out of the collections (`gc.freeze`: a full collection
    then scans a seed's leftovers, not the ~200k objects of the imports); restore both after."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)
    frozen = gc.get_freeze_count() == 0  # (a caller that froze the heap keeps its freeze)
    if frozen:
        gc.freeze()
    try:
        yield
    finally:
        if frozen:
            gc.unfreeze()
        gc.set_threshold(young, middle, old)


def _ignore_crashes(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A dead process's leftover task ends in SimulatedCrash: expected, not worth a word."""
    if isinstance(context.get("exception"), SimulatedCrash):
        return
    loop.default_exception_handler(context)


def run_seeds(
    case: SimCase,
    seeds: Iterable[int],
    *,
    on_result: Callable[[SeedResult], None] | None = None,
    failures_max: int = 1,
    keep_trace: bool = False,
    jobs: int = 1,
) -> SimReport:
    """Simulate each seed; stop after `failures_max` failing seeds.

    With `jobs` > 1 the seeds are spread over that many forked processes (each seed is still
    simulated alone, so its result does not depend on `jobs`); results arrive in seed order.
    Safe to call from inside a running event loop (pytest-asyncio): the seeds then run on a
    thread of their own.
    """
    assert failures_max >= 1 and 1 <= jobs <= JOBS_MAX, (failures_max, jobs)
    if jobs > 1 and "fork" in multiprocessing.get_all_start_methods():
        return _run_parallel(case, list(seeds), on_result, failures_max, keep_trace, jobs)
    if not _in_event_loop():  # (not from inside `except`: every exception a seed raised
        # would carry that RuntimeError as its context, into tracebacks stored in history)
        return _run_seeds(case, seeds, on_result, failures_max, keep_trace)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(_run_seeds, case, seeds, on_result, failures_max, keep_trace).result()


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


_forked_case: list[SimCase] = []  # the case a forked process simulates (inherited, not pickled)


def _run_chunk(task: tuple[list[int], bool]) -> list[SeedResult]:
    seeds, keep_trace = task
    results: list[SeedResult] = []
    _run_seeds(_forked_case[0], seeds, results.append, len(seeds) + 1, keep_trace)
    return results


def _run_parallel(
    case: SimCase,
    seeds: list[int],
    on_result: Callable[[SeedResult], None] | None,
    failures_max: int,
    keep_trace: bool,
    jobs: int,
) -> SimReport:
    _forked_case[:] = [case]  # handlers are closures: the processes inherit the case by fork
    chunks = [seeds[i : i + SEEDS_PER_CHUNK] for i in range(0, len(seeds), SEEDS_PER_CHUNK)]
    report = SimReport()
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        for results in pool.imap(_run_chunk, [(chunk, keep_trace) for chunk in chunks]):
            for result in results:
                report.add(result)
                if on_result is not None:
                    on_result(result)
                if len(report.failures) >= failures_max:
                    break
            if len(report.failures) >= failures_max:
                break
    report.elapsed_s = time.perf_counter() - started
    return report


def _run_seeds(
    case: SimCase,
    seeds: Iterable[int],
    on_result: Callable[[SeedResult], None] | None,
    failures_max: int,
    keep_trace: bool,
) -> SimReport:
    bound_ms = case.bound_ms if case.bound_ms is not None else run_bound_ms(case.workflow)
    report = SimReport()
    shared = case_shared(case)  # (once per call: what no seed's outcome depends on)
    loop = SimLoop()  # type: ignore[abstract]  # (no I/O: the abstract I/O methods go unused)
    loop.set_exception_handler(_ignore_crashes)
    started = time.perf_counter()
    try:
        with quiet(), _fewer_collections():
            for count, seed in enumerate(seeds):
                assert count < settings.seeds_per_call_max, "too many seeds in one call"
                simulation = Simulation(
                    case, seed, bound_ms=bound_ms, keep_trace=keep_trace, shared=shared
                )
                result = loop.run_until_complete(simulation.run())
                loop.drop_timers()  # (nothing of a seed lives on into the next one)
                del simulation  # (its world is garbage now, held in cycles: collect it young)
                gc.collect(0)
                report.add(result)
                if on_result is not None:
                    on_result(result)
                if len(report.failures) >= failures_max:
                    break
    finally:
        loop.close()
    report.elapsed_s = time.perf_counter() - started
    return report


def run_seed(case: SimCase, seed: int, *, keep_trace: bool = True) -> SeedResult:
    """One seed on its own (a replay with `--seed N`), its trace kept."""
    results: list[SeedResult] = []
    run_seeds(case, [seed], on_result=results.append, keep_trace=keep_trace)
    assert len(results) == 1
    return results[0]


def failure_text(result: SeedResult, reproduce: str, trace_lines: int) -> str:
    """What a failing seed prints: the broken invariants, the command that reproduces it, and
    the last `trace_lines` lines of its trace."""
    lines = [f"seed {result.seed} FAILED after {result.steps} steps, {result.virtual_ms} ms:"]
    for violation in result.violations:
        where = f" [{violation.run_id}]" if violation.run_id else ""
        lines.append(f"  {violation.invariant}{where}: {violation.message} (step {violation.step})")
    if result.faults:
        faults = ", ".join(f"{name}={count}" for name, count in result.faults.items())
        lines.append(f"  faults injected: {faults}")
    lines.append(f"  reproduce: {reproduce}")
    tail = result.trace[-trace_lines:] if trace_lines else ()
    if tail:
        lines.append(f"  last {len(tail)} trace lines:")
        lines.extend(f"    {line}" for line in tail)
    return "\n".join(lines)


__all__ = [
    "JOBS_MAX",
    "SimReport",
    "failure_text",
    "run_bound_ms",  # (dagnats/sim/bounds.py: re-exported where callers found it)
    "run_seed",
    "run_seeds",
]
