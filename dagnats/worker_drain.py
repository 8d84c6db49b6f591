"""A worker's drain on SIGTERM, within one bound the user sets (`drain_timeout_ms`).

A termination grace (Kubernetes' 30 s, systemd's `TimeoutStopSec`) ends in SIGKILL, which
would cut a result off mid-send; so the whole drain, from the stop to the process's exit, fits
`drain_timeout_ms` (25 s by default: a 30 s grace with 5 s of margin), shared in three parts:

    [stop .. handlers_end)       handlers in flight finish (nothing new is taken)
    [handlers_end .. results_end) handlers still running are cancelled (each gets the worker's
                                 cancel grace, at most to `results_end`; one that ignores it is
                                 counted hung and left running); results being sent go on
    [results_end .. exit_by)     results still unacknowledged are given up; the connection
                                 closes and the process exits

The results' part is a quarter of the drain, at most `drain_results_part_ms_max` (a result is
normally acknowledged within a millisecond; this covers a few resends across a brief outage);
the exit's part a tenth, at most `drain_exit_part_ms_max`; handlers get what is left.

A task whose handler was cancelled, or whose result was not acknowledged, is not acked: the
server delivers it again after its heartbeat timeout, another worker reports the attempt lost,
and the engine runs it again (a result the server did store before its ack was lost has
completed the step already, and the lost report is then decided as nothing): never lost, never
completed twice. The drain says which in structured log lines (`fate`, `attempts`).

The drain counts from the stop: a fetch loop still waiting on the server then (a look opening
a pull) is cut at once (`fetch_until_stop`), not waited for.

This module waits for and cancels the jobs (and the fetch loop) it is given, and logs; nothing
else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Final, NamedTuple

drain_timeout_ms_default: Final = 25_000  # fits a 30 s termination grace with 5 s of margin
drain_timeout_ms_min: Final = 1_000
drain_timeout_ms_max: Final = 3_600_000
drain_results_part_ms_max: Final = 5_000  # the drain's part kept for sending results, at most
drain_exit_part_ms_max: Final = 1_000  # its last part, for closing the connection and exiting
drain_attempts_logged_max: Final = 20  # attempt ids named in one drain log line
FATE_DELIVERED_AGAIN: Final = "delivered_again"  # the log's `fate` of a task given back


def check_drain_timeout(drain_timeout_ms: int) -> int:
    """`drain_timeout_ms`, checked.

    Raises:
        ValueError: not an int within drain_timeout_ms_min..drain_timeout_ms_max (the message
            names the field, the value and the rule).
    """
    low, high = drain_timeout_ms_min, drain_timeout_ms_max
    if isinstance(drain_timeout_ms, bool) or not isinstance(drain_timeout_ms, int):
        raise ValueError(f"drain_timeout_ms {drain_timeout_ms!r} must be an int (milliseconds)")
    if not low <= drain_timeout_ms <= high:
        raise ValueError(
            f"drain_timeout_ms {drain_timeout_ms} must be within {low}..{high} (the whole "
            "drain on SIGTERM, in ms: keep it under the termination grace of the supervisor)"
        )
    return drain_timeout_ms


class DrainPlan(NamedTuple):
    """The loop times that share a drain begun at `began` (see the module)."""

    began: float
    handlers_end: float
    results_end: float
    exit_by: float

    @classmethod
    def of(cls, began: float, drain_timeout_ms: int) -> DrainPlan:
        timeout_ms = check_drain_timeout(drain_timeout_ms)
        exit_ms = min(drain_exit_part_ms_max, timeout_ms // 10)
        results_ms = min(drain_results_part_ms_max, timeout_ms // 4)
        handlers_ms = timeout_ms - results_ms - exit_ms
        assert handlers_ms > 0 and results_ms > 0 and exit_ms > 0, timeout_ms
        return cls(
            began=began,
            handlers_end=began + handlers_ms / 1000,
            results_end=began + (handlers_ms + results_ms) / 1000,
            exit_by=began + timeout_ms / 1000,
        )


async def fetch_until_stop(fetching: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
    """Run the fetch loop `fetching` until `stop`; a look still waiting on the server at the
    stop (opening a pull: JetStream requests bounded only by the client's timeout) is cut
    then, so that the drain's bound counts from the stop.

    Raises:
        Exception: what the fetch loop raised.
    """
    run = asyncio.ensure_future(fetching)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({run, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not run.done():
            run.cancel()
            await asyncio.wait({run})
    if not run.cancelled():
        run.result()


async def until(work: Coroutine[Any, Any, None], end: float) -> None:
    """Await `work` until the loop time `end`; cut there (what it did not finish is left)."""
    left_s = max(0.0, end - asyncio.get_running_loop().time())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(work, timeout=left_s)


async def drain(
    in_flight: set[asyncio.Task[None]],
    plan: DrainPlan,
    *,
    sending: Mapping[asyncio.Task[Any] | None, str],
    running: Callable[[], Iterable[str]],
    cancel_grace_ms: int,
    hung: set[asyncio.Task[Any]],
    log: logging.Logger,
) -> None:
    """Wait for the jobs `in_flight` as `plan` says: until `handlers_end` for all, then those
    sending a result (`sending`: job -> attempt id) until `results_end`; cancel the others at
    each bound (`running()`: the attempt ids the worker runs, for the log lines). A cancelled
    job that ignores it for `cancel_grace_ms` (or past `results_end`) is added to `hung`."""
    if not in_flight:
        return
    loop = asyncio.get_running_loop()
    jobs = set(in_flight)
    log.info("draining %d in-flight task(s)", len(jobs), extra={"in_flight": len(jobs)})
    _, pending = await asyncio.wait(jobs, timeout=max(0.0, plan.handlers_end - loop.time()))
    handling = {job for job in pending if job not in sending}  # (the others are sending)
    if handling:
        busy = set(sending.values())
        given_back = [key for key in running() if key not in busy]
        _give_back_log(log, handling, given_back, plan, "still running at the drain's handler "
                       "bound: cancelled")  # fmt: skip
        for job in handling:
            job.cancel()
        grace_s = min(cancel_grace_ms / 1000, plan.results_end - loop.time())
        _, ignoring = await asyncio.wait(handling, timeout=max(0.0, grace_s))
        for job in ignoring:  # its handler ignored it: the CLI exits without waiting
            hung.add(job)
            job.add_done_callback(hung.discard)
    results = {job for job in pending - handling if not job.done()}
    if results:
        await asyncio.wait(results, timeout=max(0.0, plan.results_end - loop.time()))
        unsent = {job for job in results if not job.done()}  # (a give-up at the bound logs)
        if unsent:
            keys = [key for job, key in sending.items() if job in unsent]
            _give_back_log(log, unsent, keys, plan, "not acknowledged by the drain's results "
                           "bound: given up")  # fmt: skip
            for job in unsent:
                job.cancel()
            await asyncio.wait(unsent, timeout=max(0.0, plan.exit_by - loop.time()))
    if hung:
        log.warning("%d hung handler(s) left running at exit", len(hung))


def _give_back_log(
    log: logging.Logger, jobs: set[asyncio.Task[Any]] | set[asyncio.Task[None]],
    attempts: list[str], plan: DrainPlan, what: str,
) -> None:  # fmt: skip
    """One structured line for the tasks the drain gives back: how many, which (the first
    `drain_attempts_logged_max`), at which bound, and their fate."""
    bound_ms = int((asyncio.get_running_loop().time() - plan.began) * 1000)
    log.warning(
        "%d task(s) %s %d ms into the drain; each will be delivered again after its heartbeat "
        "timeout, reported lost by another worker and run again (attempts: %s)",
        len(jobs), what, bound_ms, ", ".join(attempts[:drain_attempts_logged_max]) or "?",
        extra={"fate": FATE_DELIVERED_AGAIN, "tasks": len(jobs), "drain_ms": bound_ms,
               "attempts": attempts[:drain_attempts_logged_max]},
    )  # fmt: skip
