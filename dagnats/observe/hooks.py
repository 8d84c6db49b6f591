"""The engine's observer: what the engine's few hook lines call, feeding traces and metrics.

`Engine.observer` is an `EngineObserver`; the engine calls `decision(command)` around each
command, `appended(before, after, events)` after each append and `enqueueing(task)` around
each task message publish. Tracing comes from the environment (`tracing.active()`), metrics
only when serve gives them. The observer also keeps what `dagnats status` shows of the
engine: the workers seen lately (a step.started names its worker) and its own counters.

Nothing here raises into the engine: a failure in a hook is logged once and ignored.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from dagnats.observe import tracing as tracing_module
from dagnats.observe.metrics import Metrics
from dagnats.observe.tracing import ATTEMPT_ENDS, Tracing, task_of
from dagnats.runtime.clock import now_ms
from dagnats.runtime.settings import attempts_traced_max, workers_seen_max, workers_seen_window_ms
from kernel.commands import AnyCommand
from kernel.effects import EnqueueTask
from kernel.events import AnyEvent, RunStarted, StepScheduled, StepStarted
from kernel.state import RunState, is_terminal

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger("dagnats.observe")


class Decision:
    """One command being decided: the engine sets `outcome` when it knows it ("error" when
    its handling raised: the transport failed and the command comes back). It is also the
    context manager `EngineObserver.decision` returns (a class, not a generator: one is
    entered per command): on exit it feeds the command's span and latency, if any."""

    __slots__ = ("_observer", "_span", "_started", "outcome")

    def __init__(self, observer: EngineObserver | None = None) -> None:
        self.outcome = "error"
        self._observer = observer  # None: nothing to feed (observing is off)
        self._span: Span | None = None
        self._started = 0.0

    def __enter__(self) -> Decision:
        return self

    def __exit__(self, *_: object) -> None:
        observer = self._observer
        if observer is None:
            return
        if observer.metrics is not None:
            observer.metrics.decided(self.outcome, time.perf_counter() - self._started)
        if self._span is not None:
            self._span.set_attribute("dagnats.outcome", self.outcome)
            self._span.end()


class EngineObserver:
    """Traces and metrics of one engine (see the module docstring)."""

    def __init__(self, metrics: Metrics | None = None, tracing: Tracing | None = None) -> None:
        self.metrics = metrics
        self.tracing = tracing if tracing is not None else tracing_module.active()
        # When each attempt was scheduled (ms), until it ends; bounded (an attempt whose
        # start was forgotten, or scheduled before this engine started, starts at its end).
        self._scheduled_ms: OrderedDict[tuple[str, str, int], int] = OrderedDict()
        self._workers: OrderedDict[str, int] = OrderedDict()  # worker id -> last seen (ms)
        self._failed_once = False

    @property
    def on(self) -> bool:
        return self.metrics is not None or self.tracing is not None

    def decision(self, command: AnyCommand) -> Decision:
        """Around one command's handling (`with`): its span and its latency."""
        tracing = self.tracing
        if tracing is None and self.metrics is None:
            return Decision()
        decision = Decision(self)
        if tracing is not None:
            decision._span = tracing.start_decision(command)
        decision._started = time.perf_counter()
        return decision

    def enqueueing(self, task: EnqueueTask) -> contextlib.AbstractContextManager[None]:
        """Around a task message's publish: its attempt's trace context is current."""
        if self.tracing is None:
            return contextlib.nullcontext()
        return self.tracing.enqueueing(task)

    def appended(self, before: RunState, after: RunState, events: tuple[AnyEvent, ...]) -> None:
        """After a decision's events are appended: the spans and counts they end."""
        if not self.on:
            return
        try:
            self._appended(before, after, events)
        except Exception as error:  # observing must never stop a run
            if not self._failed_once:
                log.warning("observing a decision failed (logged once): %r", error)
            self._failed_once = True

    def _appended(self, before: RunState, after: RunState, events: tuple[AnyEvent, ...]) -> None:
        run_id = after.run_id
        for event in events:
            if isinstance(event, StepScheduled):
                self._remember((run_id, event.step_id, event.attempt), event.at_ms)
            elif isinstance(event, StepStarted):
                self._scheduled_ms.setdefault((run_id, event.step_id, event.attempt), event.at_ms)
                self._saw_worker(event.worker_id, event.at_ms)
            elif isinstance(event, ATTEMPT_ENDS):
                key = (run_id, event.step_id, event.attempt)
                start_ms = self._scheduled_ms.pop(key, event.at_ms)
                if self.tracing is not None:
                    self.tracing.attempt_ended(after, event, start_ms)
                if self.metrics is not None:
                    outcome = str(type(event).__struct_config__.tag).removeprefix("step.")
                    seconds = (event.at_ms - start_ms) / 1000
                    self.metrics.attempt_ended(task_of(after, event.step_id), outcome, seconds)
            elif isinstance(event, RunStarted) and self.metrics is not None:
                self.metrics.run_started(event.workflow.name)
        if is_terminal(after) and not is_terminal(before):
            if self.tracing is not None:
                self.tracing.run_ended(after)
            if self.metrics is not None:
                workflow = after.workflow.name if after.workflow is not None else ""
                self.metrics.run_finished(workflow, after.status)

    def _remember(self, key: tuple[str, str, int], at_ms: int) -> None:
        self._scheduled_ms[key] = at_ms
        while len(self._scheduled_ms) > attempts_traced_max:
            self._scheduled_ms.popitem(last=False)

    def _saw_worker(self, worker_id: str, at_ms: int) -> None:
        if not worker_id:
            return
        self._workers[worker_id] = at_ms
        self._workers.move_to_end(worker_id)
        while len(self._workers) > workers_seen_max:
            self._workers.popitem(last=False)

    def workers_seen(self, at_ms: int | None = None) -> list[str]:
        """The workers that started an attempt within `workers_seen_window_ms`, sorted."""
        since = (at_ms if at_ms is not None else now_ms()) - workers_seen_window_ms
        return sorted(worker for worker, seen in self._workers.items() if seen >= since)
