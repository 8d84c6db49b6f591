"""The `model_matches` invariant: every run of a seed against the reference model (model.py).

Two records feed it. The history: each appended decision's command (formats only: what the
engine took, in its order) is fed to the run's `ModelRun`; a command the engine decided events
on while the model finds nothing to do for it is a mismatch at once. The workers: the
`AttemptLog` the scheduler writes, per attempt, what each delivery did (delivered, hung, its
handler returned or raised, its result sent or lost, its worker died), so a mismatch tells the
attempt's story and a result a worker sent is expected to arrive.

Checked as the history grows (before each command is fed, at its append time) and at the end
of the seed:

- due work is done: a step waiting to retry gets its retry within its longest backoff plus
  `DISPATCH_SLACK_MS`; an attempt out ends (its result, its loss, its timeout) within
  `attempt_bound_ms` of its start, and within `RESULT_SLACK_MS` of the moment its handler
  returned on a worker that sent the result; a run that ends (by its timeout, a cancel) with
  such work overdue lost it;
- a lost attempt the model runs again at once is a decision that records `step.lost` (and a
  lost attempt that fails the step for good records none);
- at the end, each run's status, each step's status, attempt count and lost attempts, the
  outputs of its completed steps and the output of a completed run equal the model's.

Work is not expected of a seed whose queues dropped a message over its delivery bound (the
substrate gave up on it; the run then ends by a timeout).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import msgspec

from dagnats.sim import settings
from dagnats.sim.bounds import DISPATCH_SLACK_MS, attempt_bound_ms
from dagnats.sim.memory import HistoryMessage, VirtualTime
from dagnats.sim.memory_queue import MemoryQueue
from dagnats.sim.model import ModelRun, ModelStep, Observed, compare, max_backoff_ms
from dagnats.worker import decode_task
from kernel.batch import commands_of
from kernel.commands import StartRun
from kernel.errors import DecodeError
from kernel.events import Decision, StepLost, event_tag
from kernel.state import RunState

# A result a worker sent arrives within this (or, lost, its task comes back after the ack
# wait and is reported lost).
RESULT_SLACK_MS: Final = settings.task_ack_wait_ms + DISPATCH_SLACK_MS
STORY_LINES_MAX: Final = 12  # lines of a step's story in a mismatch

Violate = Callable[[str, str, str], None]


@dataclass(slots=True)
class AttemptRecord:
    """What the workers did with one attempt."""

    # (virtual ms, worker, what): made into lines only for a mismatch's report (`story`)
    story: list[tuple[int, str, str]] = field(default_factory=list)
    result_sent_at_ms: int | None = None  # a handler returned or raised and its worker sent it


class AttemptLog:
    """Per (run, step, attempt): each delivery and how it ended, written by the scheduler."""

    def __init__(
        self, time: VirtualTime, keys: dict[bytes, tuple[str, str, int]] | None = None
    ) -> None:
        """`keys`: task messages already decoded to their (run, step, attempt) by another
        listener (the oracle's, at publish), read before decoding one here."""
        self.time = time
        self.attempts: dict[tuple[str, str, int], AttemptRecord] = {}
        self.decoded = keys if keys is not None else {}
        # A task message's (run, step, attempt), decoded once: each delivery records 2-3 times.
        self._keys: dict[bytes, tuple[str, str, int] | None] = {}

    def record(self, data: bytes, worker: str, text: str, *, sent: bool = False) -> None:
        key = self._key(data)
        if key is None:
            return
        record = self.attempts.get(key)
        if record is None:
            record = self.attempts[key] = AttemptRecord()
        now = self.time.now_ms
        if len(record.story) < settings.violations_per_seed_max:
            record.story.append((now, worker, text))
        if sent and record.result_sent_at_ms is None:
            record.result_sent_at_ms = now

    def _key(self, data: bytes) -> tuple[str, str, int] | None:
        known = self.decoded.get(data)
        if known is not None:
            return known
        if data in self._keys:
            return self._keys[data]
        try:
            task = decode_task(data)
        except DecodeError:
            key = None
        else:
            key = (task.run_id, task.step_id, task.attempt)
        if len(self._keys) < settings.task_keys_remembered_max:
            self._keys[data] = key
        return key

    def story(self, run_id: str, step_id: str) -> list[str]:
        lines: list[str] = []
        for (run, step, attempt), record in sorted(self.attempts.items()):
            if run == run_id and step == step_id:
                lines.extend(
                    f"    {step}#{attempt} @{at_ms - settings.epoch_ms} ms {worker}: {text}"
                    for at_ms, worker, text in record.story
                )
        return lines[-STORY_LINES_MAX:]


class ModelCheck:
    """Feeds each run's history to its model and reports where the engine's run differs."""

    def __init__(
        self, time: VirtualTime, violate: Violate, attempts: AttemptLog, queues: list[MemoryQueue]
    ) -> None:
        self.time = time
        self.violate = violate
        self.attempts = attempts
        self.queues = queues
        self.runs: dict[str, ModelRun] = {}
        self.broken: set[str] = set()  # runs already reported (one mismatch each)

    def on_decision(self, message: HistoryMessage, decision: Decision) -> None:
        command = decision.command
        run_id = message.run_id
        if isinstance(command, StartRun):
            if run_id not in self.runs:
                self.runs[run_id] = ModelRun(command, message.at_ms)
            return
        model = self.runs.get(run_id)
        if model is None or run_id in self.broken:
            return
        self._check_due(run_id, model, message.at_ms)
        if run_id in self.broken:
            return
        applied: bool | None = None
        lost_fed: set[str] = set()  # steps whose fed command the model has as a lost attempt
        for each in commands_of(command):  # (a DecideAll's commands in turn: kernel/batch.py)
            fed = model.feed(each, message.at_ms)
            if fed is False:
                self._mismatch(
                    run_id,
                    model,
                    [f"the engine decided {_tags(decision)} on `{model.inputs[-1].text}`; "
                     "the model finds nothing to do for it"],
                    getattr(each, "step_id", ""),
                )  # fmt: skip
                return
            applied = applied or fed
            if fed and model.lost_now:
                lost_fed.add(getattr(each, "step_id", ""))
        if not applied:
            return
        lost_recorded = {e.step_id for e in decision.events if isinstance(e, StepLost)}
        if lost_fed != lost_recorded:
            step_id = min(lost_fed ^ lost_recorded)  # (the first step they differ on)
            lost = step_id in lost_fed
            recorded = "did not record" if lost else "recorded"
            self._mismatch(
                run_id,
                model,
                [f"the engine {recorded} step.lost for step {step_id} (it decided "
                 f"{_tags(decision)}); the model has the attempt "
                 f"{'lost, the next one started at once' if lost else 'failed'}"],
                step_id,
            )  # fmt: skip

    def check_final(self, states: dict[str, RunState]) -> None:
        """At the end of the seed: no work overdue, and every run as the model has it."""
        for run_id, model in sorted(self.runs.items()):
            if run_id in self.broken or not model.modelled:
                continue
            state = states.get(run_id)
            if state is None:
                continue
            if model.ended_at_ms is None:
                self._check_due(run_id, model, self.time.now_ms)
            if run_id in self.broken:
                continue
            lines = compare(model, observe(state))
            if lines:
                step_ids = [line.split()[1].rstrip(":") for line in lines if line[:5] == "step "]
                self._mismatch(run_id, model, lines, step_ids[0] if step_ids else "")

    # -- due work -------------------------------------------------------------------------

    def _check_due(self, run_id: str, model: ModelRun, now_ms: int) -> None:
        for queue in self.queues:
            if queue.stats.dropped:
                return  # the substrate gave up on a message: nothing is owed any more
        for step in model.retry_waits():
            due = step.retry_due_ms + DISPATCH_SLACK_MS
            if now_ms > due:
                self._late(
                    run_id, model, step, now_ms, due, f"attempt {step.attempt + 1} (a retry)"
                )
                return
        for step in model.live():
            due = step.started_at_ms + attempt_bound_ms(model.defs[step.id].timeout_ms)
            record = self.attempts.attempts.get((run_id, step.id, step.attempt))
            sent = record.result_sent_at_ms if record is not None else None
            if sent is not None:
                due = min(due, sent + RESULT_SLACK_MS)
            if now_ms > due:
                what = f"the end of attempt {step.attempt}" + (
                    " (its worker sent the result)" if sent is not None else ""
                )
                self._late(run_id, model, step, now_ms, due, what)
                return

    def _late(
        self, run_id: str, model: ModelRun, step: ModelStep, now_ms: int, due: int, what: str
    ) -> None:
        late = now_ms - due
        self._mismatch(
            run_id,
            model,
            [f"step {step.id}: {what} was due by +{due - _start(model)} ms and has not come "
             f"{late} ms later (the model has the step {step.status} since "
             f"+{_since(model, step)} ms)"],
            step.id,
        )  # fmt: skip

    def _mismatch(self, run_id: str, model: ModelRun, lines: list[str], step_id: str) -> None:
        self.broken.add(run_id)
        text = ["the engine's run differs from the reference model:"]
        text.extend(f"  {line}" for line in lines)
        start = _start(model)
        fed = model.inputs[-STORY_LINES_MAX:]
        text.append("  what the model was fed (history order, ms since the run's start):")
        text.extend(
            f"    +{entry.at_ms - start} {entry.text}{'' if entry.applied else ' (no-op)'}"
            for entry in fed
        )
        if step_id:
            story = self.attempts.story(run_id, step_id)
            if story:
                text.append(f"  what the workers did with {step_id} (virtual ms of the seed):")
                text.extend(story)
        self.violate("model_matches", "\n".join(text), run_id)


def _tags(decision: Decision) -> str:
    """The first tags of a decision's events, for a mismatch report."""
    return ", ".join(event_tag(type(event)) for event in decision.events[:4])


def _start(model: ModelRun) -> int:
    return model.inputs[0].at_ms


def _since(model: ModelRun, step: ModelStep) -> int:
    at = step.retry_due_ms if step.status == "retry_wait" else step.started_at_ms
    return at - _start(model)


def observe(state: RunState) -> Observed:
    """The engine's run as the model compares it: statuses, attempts, outputs."""
    observed = Observed(status=state.status)
    for step in state.steps:
        observed.steps[step.step_id] = (
            step.status, step.attempt, step.lost_attempts, bytes(step.output)
        )  # fmt: skip
    if state.status == "completed":
        observed.output = msgspec.json.decode(bytes(state.output))
    return observed


__all__ = ["AttemptLog", "ModelCheck", "attempt_bound_ms", "max_backoff_ms"]
