"""Command factories for run lifecycle operations (kernel.reopen), in the shape of
tests/kernel_dsl.py: commands for run "r1", stamped by the scenario when `at_ms` is left out."""

from __future__ import annotations

from kernel.commands import DiscardDeadLetter, ReopenRun, TerminateRun
from tests.kernel_dsl import RUN_ID, UNSTAMPED


def reopen(
    from_step: str = "", *, reopens: int = 0, reason: str = "", at_ms: int = UNSTAMPED
) -> ReopenRun:
    return ReopenRun(
        run_id=RUN_ID, at_ms=at_ms, from_step=from_step, reopens=reopens, reason=reason
    )


def terminate(reason: str = "stuck", *, at_ms: int = UNSTAMPED) -> TerminateRun:
    return TerminateRun(run_id=RUN_ID, at_ms=at_ms, reason=reason)


def discard(step_id: str, attempt: int, *, at_ms: int = UNSTAMPED) -> DiscardDeadLetter:
    return DiscardDeadLetter(run_id=RUN_ID, at_ms=at_ms, step_id=step_id, attempt=attempt)
