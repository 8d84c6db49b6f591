"""A run's bound of virtual time: by when it must end under the simulated faults.

`run_bound_ms(workflow)` is the bound a run gets at its start: every step in a row, each with
all the attempts its retry policy allows at their longest and its retry delays at their
longest. A lost attempt (its worker vanished) is not in it: it does not consume the policy
(kernel/retry.py), so a step may run up to `limits.lost_attempts_max` attempts more. Assuming
that worst case for every step would make the bound loose enough to hide a run that hangs;
`LostAttempts` instead extends each run's bound by one attempt bound per lost attempt its
history records (`*.lost` events), as they are appended.

No I/O; reads the workflow, the settings of the simulation and the history's decisions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec

from dagnats.sim import settings
from dagnats.sim.memory import HistoryMessage
from kernel import limits
from kernel.events import Decision, event_tag
from kernel.retry import backoff_ms
from kernel.workflow import NO_RETRY, RetryPolicy, WorkflowDef

LOST_SUFFIX: Final = ".lost"  # step.lost, map.item.lost, agent.turn.lost, agent.tool.lost

# How late due work may be done under the simulated faults: a command held by a crashed
# engine comes back after its ack wait (twice), engines and workers restart, messages arrive
# late, process clocks (which stamp commands, so timers) are off either way.
DISPATCH_SLACK_MS: Final = (
    2 * settings.command_ack_wait_ms
    + settings.engine_restart_ms_max
    + settings.worker_restart_ms_max
    + 2 * settings.late_delivery_ms_max
    + 2 * settings.clock_jump_ms_max
)


def attempt_bound_ms(timeout_ms: int | None) -> int:
    """The longest one attempt may stay out: a slow or hung handler found by its heartbeat loss
    (or cut by its timeout), the report of its loss, and the dispatch slack."""
    handler = settings.slow_handler_ms_max + 2 * settings.task_ack_wait_ms
    if timeout_ms is not None:
        handler = min(handler, timeout_ms + settings.late_delivery_ms_max)
    return handler + DISPATCH_SLACK_MS


def _retry_delays_ms(policy: RetryPolicy) -> int:
    total = 0
    flat = msgspec.structs.replace(policy, jitter=0.0)
    for attempt in range(1, policy.max_attempts):
        delay = backoff_ms(flat, attempt, 0) * (1.0 + policy.jitter)
        total += min(int(delay) + 1, limits.delay_ms_max)
    return total


def run_bound_ms(workflow: WorkflowDef) -> int:
    """The virtual time by which a run of `workflow` that lost no attempt must end under the
    simulated faults (each lost attempt adds `lost_attempt_ms` of its step).

    Every step (fallback and compensation handlers too) in a row, each with all its attempts
    at their longest and its retry delays at their longest; with a workflow timeout, no more
    than the timeout plus the handlers. A handler raising `RetryAfter` longer than its policy
    needs a bound passed in (`SimCase.bound_ms`).
    """
    handler_ids = {s.on_failure for s in workflow.steps} | {s.compensate for s in workflow.steps}
    body = handlers = 0
    for step in workflow.steps:
        policy = step.retry or workflow.default_retry or NO_RETRY
        attempts = max(1, policy.max_attempts)
        step_ms = attempts * attempt_bound_ms(step.timeout_ms) + _retry_delays_ms(policy)
        if step.id in handler_ids:
            handlers += step_ms
        else:
            body += step_ms
    bound = body + handlers + settings.run_bound_slack_ms
    if workflow.timeout_ms is not None:
        timed = workflow.timeout_ms + attempt_bound_ms(None) + handlers
        bound = min(bound, timed + settings.run_bound_slack_ms)
    return min(bound, settings.horizon_ms_max - settings.run_bound_slack_ms)


def lost_attempt_ms(workflow: WorkflowDef, step_id: str) -> int:
    """What one lost attempt of `step_id` adds to its run's bound: one attempt bound of the
    step (an appended step or one not in the workflow: an attempt without a timeout)."""
    timeout = next((s.timeout_ms for s in workflow.steps if s.id == step_id), None)
    return attempt_bound_ms(timeout)


class LostAttempts:
    """Per run, the virtual time its lost attempts add to its bound; fed every decision."""

    def __init__(self, workflow: WorkflowDef) -> None:
        self.workflow = workflow
        self.extra_ms: dict[str, int] = {}
        self.most_ms = 0  # the largest extension of any run (for the seed's horizon)

    def on_decision(self, message: HistoryMessage, decision: Decision) -> None:
        added = 0
        for event in decision.events:
            if event_tag(type(event)).endswith(LOST_SUFFIX):
                added += lost_attempt_ms(self.workflow, getattr(event, "step_id", ""))
        if added:
            extra = self.extra_ms.get(message.run_id, 0) + added
            assert extra <= settings.horizon_ms_max, (message.run_id, extra)
            self.extra_ms[message.run_id] = extra
            self.most_ms = max(self.most_ms, extra)

    def bound_ms(self, base_ms: int, run_id: str) -> int:
        """A run's bound: `base_ms`, plus what its lost attempts so far add."""
        return base_ms + self.extra_ms.get(run_id, 0)

    def check_ends(
        self,
        base_ms: int,
        started_at_ms: dict[str, int],
        ends: dict[str, tuple[str, int | None]],
        now_ms: int,
        violate: Callable[[str, str, str], None],
    ) -> None:
        """`run_ends_in_bound`: each run started (run id -> its start) ended within its bound
        (`ends`: run id -> its status and when it ended, None while it has not)."""
        for run_id, started in sorted(started_at_ms.items()):
            status, ended = ends.get(run_id, ("new", None))
            bound = self.bound_ms(base_ms, run_id)
            if ended is None:
                violate(
                    "run_ends_in_bound",
                    f"the run is still {status} after {now_ms - started} ms of virtual time "
                    f"(its bound is {bound} ms)",
                    run_id,
                )
            elif ended - started > bound:
                violate(
                    "run_ends_in_bound",
                    f"the run ended {ended - started} ms after its start; its bound is {bound} ms",
                    run_id,
                )
