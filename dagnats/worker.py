"""The Python worker SDK: register async handlers per task type and serve them.

```python
worker = Worker()

@worker.task("payments.charge")
async def charge(ctx: TaskContext) -> dict[str, object]:
    ...
```

A handler returns any JSON-encodable value (the step's output), or raises `NonRetryableError`
(fail the step for good), `RetryAfter(seconds)` (retry no sooner than that) or any other
exception (a retryable failure, recorded with a short traceback). While it runs, the worker
heartbeats the task message so it stays with this worker; if the worker dies, the message is
delivered to another worker after the heartbeat timeout, which reports the lost attempt so the
engine schedules the next one. A result is kept (and its task heartbeated) until the server
acknowledged it: its publish is retried under the same `Nats-Msg-Id` across reconnects, for at
most `settings.result_send_ms_max`. On SIGTERM the worker drains within `drain_timeout_ms`
(dagnats/worker_drain.py): nothing new is taken, in-flight handlers finish within its first
part (then they are cancelled), results are sent within its second, and what is still not
acknowledged is left to come back to another worker.

Hostile handlers: whatever a handler raises, BaseException included (KeyboardInterrupt,
SystemExit, GeneratorExit, its own CancelledError), is caught where it runs (in a task of its
own when the attempt has a deadline: dagnats/worker_invoke.py) and recorded as a failure;
messages and tracebacks are cut to `limits.error_message_bytes_max` (dagnats/worker_safety.py
renders them without trusting `__str__`). A handler past its task's `deadline_ms` is
cancelled; one that ignores it for `handler_cancel_grace_ms` is left running, logged once, and
its slot taken back (the engine's step timer records the timeout; the worker sends nothing for
that attempt). On SIGTERM, handlers still running at the drain's handler bound are cancelled
(one that ignores that too is counted hung: the CLI exits without waiting for it). An output
is refused (`invalid_output`, with its JSON path) when it nests deeper than `json_depth_max`,
holds NaN or an infinity (JSON has neither: encoders write null), or holds bytes, bytearray
or memoryview (encoders write base64 the reader never asked for).

Fetching: one fair loop over all the worker's task types (dagnats/worker_fetch.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import msgspec

from dagnats.agent import turn_result, with_children
from dagnats.observe import tracing
from dagnats.runtime import settings
from dagnats.runtime.assertions import require_assertions
from dagnats.runtime.clock import new_seed, now_ms
from dagnats.runtime.ended_runs import EndedRuns, check_due, ended_runs_of, skip_reason
from dagnats.runtime.outage import OutageLog
from dagnats.runtime.protocols import (
    Clock,
    CommandPublisher,
    DeadLetters,
    TaskMessage,
    TaskQueue,
)
from dagnats.worker_context import (
    NO_ENVELOPE,
    LivePublisher,
    NonRetryableError,
    TaskContext,
    TaskEnvelope,
    read_envelope,
)
from dagnats.worker_drain import (
    FATE_DELIVERED_AGAIN,
    DrainPlan,
    check_drain_timeout,
    drain,
    drain_timeout_ms_default,
    fetch_until_stop,
    until,
)
from dagnats.worker_fetch import FetchLoop
from dagnats.worker_groups import (
    check_concurrency,
    check_groups,
    concurrency_max,
    lanes,
    presence_of,
)
from dagnats.worker_heartbeat import Heartbeats
from dagnats.worker_invoke import Handler, Raised, Returned, invoke, invoke_here, start_job
from dagnats.worker_safety import (
    cut_text,
    output_json,
    render_error,
    render_message,
    render_raised,
    short_traceback,
)
from dagnats.worker_send import ResultNotSentError, send_until_acked
from dagnats.worker_slots import HandlerSlots
from kernel import codec
from kernel.commands import CompleteTask, FailTask, FailureKind, TaskStarted
from kernel.effects import EnqueueTask, life_of
from kernel.errors import DagnatsError, DecodeError

TaskResult = CompleteTask | FailTask

heartbeat_interval_ms_default = settings.task_heartbeat_interval_ms_default
concurrency_default = 16
fetch_batch_default = 64  # task messages fetched at once, bounded by the free handler slots
finished_attempts_remembered_max = 10_000
# A handler cancelled at its deadline gets this long to end before its slot is taken back
# (it is then left running, logged once, and no longer counted).
handler_cancel_grace_ms_default = 2_000

_task_decoder = msgspec.json.Decoder(EnqueueTask)


class RetryAfter(DagnatsError):  # noqa: N818 (the name users know from other engines)
    """Raise from a handler to retry the step no sooner than `seconds` from now."""

    def __init__(self, seconds: float, message: str = "") -> None:
        assert seconds >= 0, f"RetryAfter seconds {seconds} must be >= 0"
        self.seconds = seconds
        super().__init__(message or f"retry after {seconds}s")


class Worker:
    """Runs registered handlers for task messages, with bounded concurrency."""

    def __init__(
        self,
        *,
        concurrency: int = concurrency_default,
        worker_id: str | None = None,
        heartbeat_interval_ms: int = heartbeat_interval_ms_default,
        report_started: bool = False,
        fetch_batch_max: int = fetch_batch_default,
        clock: Clock | None = None,
        seeds: Callable[[], int] | None = None,
        groups: Sequence[str] = (),
        drain_timeout_ms: int = drain_timeout_ms_default,
    ) -> None:
        """`clock` stamps `at_ms` and `seeds` draws command seeds: the wall clock and `random`
        unless given (the simulator passes virtual time and a seeded source).
        `drain_timeout_ms`: on SIGTERM, the whole drain to the exit (dagnats/worker_drain.py).

        Raises:
            ValueError: concurrency, fetch_batch_max or drain_timeout_ms out of range (naming
                the value and the rule).
        """
        self.concurrency = check_concurrency(concurrency)
        self.groups = check_groups(groups)  # README "Worker groups" (dagnats/worker_groups)
        self.beat_interval_ms = settings.worker_beat_interval_ms_default  # worker directory
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.report_started = report_started
        self.now_ms: Callable[[], int] = clock.now_ms if clock is not None else now_ms
        self.new_seed: Callable[[], int] = seeds if seeds is not None else new_seed
        if not 1 <= fetch_batch_max <= 1_000:
            raise ValueError(f"fetch_batch_max {fetch_batch_max} must be within 1..1000")
        self.fetch_batch_max = fetch_batch_max
        self.handler_cancel_grace_ms = handler_cancel_grace_ms_default
        self.drain_timeout_ms = check_drain_timeout(drain_timeout_ms)
        self.handlers: dict[str, Handler] = {}
        self.log = logging.getLogger("dagnats.worker")
        self._in_flight: set[asyncio.Task[None]] = set()
        # Handlers that ignored their cancellation past the grace: left running, not counted.
        self.hung: set[asyncio.Task[Any]] = set()
        self._slots: HandlerSlots | None = None  # set by serve (the simulator runs jobs)
        self._wake = asyncio.Event()  # a poll came back, a slot freed (when needed), stop
        self._fetching: FetchLoop | None = None  # told when a job ends (it may want the slot)
        # Deliveries of each attempt this process runs, and recently finished attempts: a
        # repeat delivery after a server crash must not run a handler twice.
        self._running: dict[str, list[TaskMessage]] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self.handled = 0
        # How long a result is sent again before the worker gives up on it; and the drain's
        # bounds once it began (its results are given up at its results' end).
        self.result_send_ms_max = settings.result_send_ms_max
        self._drain_plan: DrainPlan | None = None  # (None: not draining)
        # Jobs whose handler ended and whose result is being sent (-> their attempt): the
        # drain's handler bound does not cancel them (its results' bound ends their sending).
        self._sending: dict[asyncio.Task[Any] | None, str] = {}
        self._fetch_outage = OutageLog(self.log, "fetching tasks", quiet_failures=1)
        self.live: LivePublisher | None = None  # live output of handlers (dagnats/llm/live.py)
        self._ended_runs: EndedRuns | None = None  # set by serve from its task queue
        self._heartbeats: Heartbeats | None = None  # made at the first task (`_beats`)

    def task(self, name: str) -> Callable[[Handler], Handler]:
        """Register the decorated async function as the handler of task type `name`."""

        def register(handler: Handler) -> Handler:
            if name in self.handlers:
                raise ValueError(f"task {name!r} already has a handler")
            self.handlers[name] = handler
            return handler

        return register

    def add(self, name: str, handler: Handler) -> None:
        """Register `handler` for task type `name` (the undecorated form)."""
        self.task(name)(handler)

    async def serve(
        self,
        tasks: TaskQueue,
        commands: CommandPublisher,
        dead: DeadLetters,
        stop: asyncio.Event,
    ) -> None:
        """Fetch and run tasks of every registered type until `stop` is set, then drain
        within `drain_timeout_ms` of it (dagnats/worker_drain.py).

        Raises:
            AssertionsDisabledError: under `python -O` (assertions are part of the safety).
            DagnatsError: the worker has no handlers.
            ValueError: concurrency or drain_timeout_ms (set since) out of range.
        """
        require_assertions("the worker")
        if not self.handlers:
            raise DagnatsError("the worker has no handlers; register one with @worker.task(name)")
        check_concurrency(self.concurrency)
        check_drain_timeout(self.drain_timeout_ms)
        self._slots = HandlerSlots(self.concurrency)
        self._wake = asyncio.Event()
        self._drain_plan = None  # (a worker served again: not its last drain's)
        if self.live is None and isinstance(commands, LivePublisher):
            self.live = commands
        fetching = FetchLoop(
            lanes(self.handlers, self.groups),
            tasks,
            stop,
            dispatch=lambda messages: self._dispatch(messages, commands, dead),
            free_slots=lambda: self.concurrency - len(self._in_flight),
            wake=self._wake,
            outage=self._fetch_outage,
            batch_max=self.fetch_batch_max,
        )
        self._fetching = fetching
        self._ended_runs = ended_runs_of(tasks)
        presence = presence_of(tasks, self)
        if presence is not None:
            presence.start()
        try:
            await fetch_until_stop(fetching.run(), stop)
        finally:
            loop = asyncio.get_running_loop()
            plan = self._drain_plan = DrainPlan.of(loop.time(), self.drain_timeout_ms)
            handled = self.handled  # (results acknowledged from here on are the drain's)
            await until(fetching.end(), plan.handlers_end)  # (what it left comes back)
            if presence is not None:  # (its entry expires by itself if this is cut short)
                await until(presence.stop(self.worker_id), plan.handlers_end)
            await drain(
                self._in_flight, plan, sending=self._sending, running=self._running.keys,
                cancel_grace_ms=self.handler_cancel_grace_ms, hung=self.hung, log=self.log,
            )  # fmt: skip
            drain_ms = int((loop.time() - plan.began) * 1000)
            acknowledged = self.handled - handled
            self.log.info(
                "drained in %d ms: %d result(s) acknowledged during the drain", drain_ms,
                acknowledged, extra={"drain_ms": drain_ms, "acknowledged": acknowledged},
            )  # fmt: skip

    def _dispatch(
        self, messages: Sequence[TaskMessage], commands: CommandPublisher, dead: DeadLetters
    ) -> None:
        for message in messages:  # (a job may be done already: its callback comes soon)
            job = start_job(self._run_job(message, commands, dead))
            self._in_flight.add(job)
            job.add_done_callback(self._job_done)

    def in_flight_count(self) -> int:
        return len(self._in_flight)

    def _job_done(self, job: asyncio.Task[None]) -> None:
        self._in_flight.discard(job)
        if self._fetching is not None:
            self._fetching.job_ended()

    async def _run_job(
        self, message: TaskMessage, commands: CommandPublisher, dead: DeadLetters
    ) -> None:
        """`_run_message`, its failures logged (one line each): nothing escapes a job. What
        was not settled comes back after the heartbeat timeout."""
        try:
            await self._run_message(message, commands, dead)
        except ResultNotSentError as error:  # (its task comes back: say so, structured)
            fate = {"msg_id": error.msg_id, "fate": FATE_DELIVERED_AGAIN}
            self.log.error("%s", error, extra=fate)
        except Exception as error:
            self.log.warning(
                "a task message was left unsettled (it comes back): %s", render_error(error)
            )

    async def _run_message(
        self, message: TaskMessage, commands: CommandPublisher, dead: DeadLetters
    ) -> None:
        try:
            task = decode_task(message.data)
        except DecodeError as error:
            await dead.publish_dead("task", message.data, str(error))
            await message.term()
            return
        key = task.msg_id  # this attempt of this life of the run (kernel/effects.task_msg_id)
        riding = self._running.get(key)
        if riding is not None:
            # The server lost its delivery state (a crash) and sent a running attempt again:
            # it rides along, heartbeated and acked with the delivery that runs.
            riding.append(message)
            return
        if key in self._finished:  # its result was sent; the server forgot our ack
            await message.ack()
            return
        stored_ms = getattr(message, "stored_ms", None)  # a task that waited: runtime/ended_runs
        if check_due(message.num_delivered, stored_ms, self.now_ms()) and (
            skipped := await skip_reason(self._ended_runs, task)
        ):
            self.log.info("%s", skipped)
            await message.ack()
            return
        if message.num_delivered > 1:
            # The worker that had this attempt was lost: report it as lost (not a failure: it
            # does not count against the retry policy), so the engine schedules the next
            # attempt under a new message id, and let this delivery go.
            reason = f"worker lost: the task was delivered again (delivery {message.num_delivered})"
            lost = self._fail(task, reason, kind="lost")
            await self._send(commands, lost, "lost", key, getattr(message, "task_token", None))
            await message.ack()
            return
        deliveries = self._running[key] = [message]
        # Heartbeats go on until the result is acknowledged: a result waiting for the server
        # (or a task waiting for a slot) keeps its task (a delivery that comes back meanwhile
        # rides along).
        beat = self._beats().start(deliveries.copy)
        try:
            headers = getattr(message, "headers", None)
            if tracing.active() is None and not (headers and tracing.TRACEPARENT in headers):
                result = await self._call_in_slot(task, commands)  # (no span, no context)
            else:
                with tracing.handler_span(task, headers) as traced:
                    result = await self._call_in_slot(task, commands)
                    traced.finish(result.error if isinstance(result, FailTask) else None)
            if result is not None:
                self._sending[job := asyncio.current_task()] = key  # (the drain lets it send)
                try:
                    await self._send(commands, result, "result", key)
                finally:
                    del self._sending[job]
        finally:
            if beat.sending is None:  # (most tasks: no beat is being sent)
                beat.cancel()
            else:
                await beat.stop()
            del self._running[key]
        self._finished[key] = None
        while len(self._finished) > finished_attempts_remembered_max:
            self._finished.popitem(last=False)
        for delivery in deliveries:
            try:
                await delivery.ack()
            except Exception as error:  # a lost ack: the delivery comes back, finds _finished
                self.log.info("acking %s failed (it comes back and is acked then): %s", key, error)
        self.handled += 1

    async def _call_in_slot(
        self, task: EnqueueTask, commands: CommandPublisher
    ) -> TaskResult | None:
        """The attempt's result (None: it passed its deadline), run in a handler slot (the
        simulator bounds its jobs itself: no slots)."""
        slots = self._slots
        if slots is not None and not slots.take_now():
            await slots.take()
        try:
            if self.report_started:
                started = TaskStarted(
                    run_id=task.run_id,
                    at_ms=self.now_ms(),
                    step_id=task.step_id,
                    attempt=task.attempt,
                    worker_id=self.worker_id,
                    life=life_of(task.msg_id),
                )
                await self._send(commands, started, "started", task.msg_id)
                return await self._call(task, None)
            return await self._call(task, self.now_ms())
        finally:
            if slots is not None:
                slots.give()

    async def _call(self, task: EnqueueTask, started_at_ms: int | None) -> TaskResult | None:
        """Run the task's handler and make its result; None when the attempt passed its
        deadline (the engine's step timer records the timeout; nothing is sent). With
        `started_at_ms` (no TaskStarted was sent), the result says who ran it since when."""
        handler = self.handlers.get(task.task)
        if handler is None:
            failed = self._fail(task, f"no handler for task {task.task!r} in this worker", "error")
            return self._ran_by(failed, started_at_ms)
        try:
            context = TaskContext(task, self.worker_id)
            context.live = self.live
        except Exception as error:
            message = f"the task's input or metadata cannot be read: {render_error(error)}"
            return self._ran_by(self._fail(task, message, "non_retryable"), started_at_ms)
        if task.deadline_ms is None:  # (no task of its own: `_run_handler`)
            outcome: Returned | Raised | None = await invoke_here(handler, context)
        else:
            outcome = await self._run_handler(handler, context, task)
        if outcome is None:
            return None
        if isinstance(outcome, Raised):
            return self._ran_by(self._failure_of(task, outcome.error), started_at_ms)
        value = with_children(outcome.value, context.children)
        return self._output_of(task, value, started_at_ms)

    def _ran_by(self, result: TaskResult, started_at_ms: int | None) -> TaskResult:
        if started_at_ms is None:
            return result
        started = started_at_ms
        return msgspec.structs.replace(result, worker_id=self.worker_id, started_at_ms=started)

    async def _run_handler(
        self, handler: Handler, context: TaskContext, task: EnqueueTask
    ) -> Returned | Raised | None:
        """The handler's outcome, or None when its deadline passed: it is then cancelled,
        and if it does not end within `handler_cancel_grace_ms` it is left running (logged
        once) and its slot is taken back. Without a deadline it runs in this task."""
        if task.deadline_ms is None:
            return await invoke_here(handler, context)
        call = asyncio.create_task(invoke(handler, context))
        timeout_s = max(0.0, (task.deadline_ms - self.now_ms()) / 1000)
        try:
            done, _ = await asyncio.wait({call}, timeout=timeout_s)
        except asyncio.CancelledError:  # the worker's own cancellation (drain bound, a crash)
            call.cancel()
            try:  # (a handler that ignores it is hung: the CLI's exit does not wait for it)
                await asyncio.wait({call}, timeout=self.handler_cancel_grace_ms / 1000)
            finally:
                if not call.done():
                    self.hung.add(call)
                    call.add_done_callback(self.hung.discard)
            raise
        if done:
            return call.result()
        call.cancel()
        done, _ = await asyncio.wait({call}, timeout=self.handler_cancel_grace_ms / 1000)
        where = f"run {task.run_id} step {task.step_id} attempt {task.attempt}"
        if done:
            self.log.info("%s passed its deadline: its handler was cancelled", where)
            return None
        self.hung.add(call)
        call.add_done_callback(self.hung.discard)
        self.log.error(
            "%s passed its deadline and its handler ignored the cancellation for %d ms: left "
            "running, its slot taken back (%d hung handler(s) in this worker)",
            where, self.handler_cancel_grace_ms, len(self.hung),
        )  # fmt: skip
        return None

    def _failure_of(self, task: EnqueueTask, error: BaseException) -> FailTask:
        """The failure a handler's exception reports (never raises, whatever it raised)."""
        if isinstance(error, NonRetryableError):
            return self._fail(task, render_message(error), "non_retryable", short_traceback(error))
        if isinstance(error, RetryAfter):
            failed = self._fail(task, render_message(error), "error", short_traceback(error))
            return msgspec.structs.replace(failed, retry_after_ms=int(error.seconds * 1000))
        if isinstance(error, Exception):
            return self._fail(task, render_error(error), "error", short_traceback(error))
        if isinstance(error, asyncio.CancelledError):
            message = "the handler raised CancelledError (the worker did not cancel it)"
            return self._fail(task, message, "error", short_traceback(error))
        # KeyboardInterrupt, SystemExit, GeneratorExit, ...: the handler's, not the worker's.
        return self._fail(task, render_raised(error), "error", short_traceback(error))

    def _output_of(
        self, task: EnqueueTask, value: object, started_at_ms: int | None = None
    ) -> TaskResult:
        """The step output of what a handler returned, or an invalid_output failure saying
        what is wrong and where; with `started_at_ms`, saying who ran it since when."""
        output: bytes | str
        if read_envelope(task).turn > 0 and (value := turn_result(value)) is None:
            output = "an agent turn handler must return Continue(...) or Done(...)"
        else:
            output = output_json(value)
        if isinstance(output, str):
            return self._ran_by(self._fail(task, output, "invalid_output"), started_at_ms)
        return CompleteTask(
            run_id=task.run_id,
            at_ms=self.now_ms(),
            seed=self.new_seed(),
            step_id=task.step_id,
            attempt=task.attempt,
            output=msgspec.Raw(output),
            worker_id=self.worker_id if started_at_ms is not None else "",
            started_at_ms=started_at_ms,
            life=life_of(task.msg_id),
        )

    async def _send(
        self, commands: CommandPublisher, command: TaskStarted | TaskResult, kind: str, key: str,
        token: str | None = None,
    ) -> None:  # fmt: skip
        """Publish `command` until the server acknowledges it: the same bytes under the same
        message id each time (`<kind>:<task message id>`, `key`: `<run>:<step>:<attempt>~<life>`),
        so a copy the server stored before an ack was lost is dropped by the duplicate window
        (and decided as nothing by the engine past it), and a run deleted and started again
        under its id within the window has its results kept (another life tag).

        Raises:
            ResultNotSentError: not acknowledged within `settings.result_send_ms_max` (or
                the drain's results' bound).
            DagnatsError: the command cannot be sent at all (too large: no retry helps).
        """
        msg_id = f"{kind}:{key}"
        if token is None and (deliveries := self._running.get(key)):
            token = getattr(deliveries[0], "task_token", None)  # the engine's, of this task
        payload = codec.encode(command)
        tries = await send_until_acked(
            partial(commands.publish_command, command.run_id, payload, msg_id, token=token),
            msg_id, send_ms_max=self.result_send_ms_max, cut_off=self._results_cut_off,
            delay_ms_min=settings.result_retry_delay_ms_min,
            delay_ms_max=settings.result_retry_delay_ms_max, log=self.log,
        )  # fmt: skip
        if tries > 1:
            self.log.info("%s acknowledged after %d tries", msg_id, tries)

    def _results_cut_off(self) -> float:
        """The loop time by which a result being sent is given up: never before a drain; in
        one, at its results' bound (dagnats/worker_drain.py)."""
        plan = self._drain_plan
        return float("inf") if plan is None else plan.results_end

    def _beats(self) -> Heartbeats:
        """The worker's heartbeats (one timer for all its attempts), at its interval."""
        beats = self._heartbeats
        if (
            beats is None
            or beats.interval_ms != self.heartbeat_interval_ms
            or beats.loop is not asyncio.get_running_loop()  # (served again in a new loop)
        ):
            beats = self._heartbeats = Heartbeats(self.heartbeat_interval_ms, self.log)
        return beats

    def _fail(self, task: EnqueueTask, error: str, kind: FailureKind, trace: str = "") -> FailTask:
        return _fail(task, error, kind, trace, at_ms=self.now_ms(), seed=self.new_seed())


def _fail(
    task: EnqueueTask, error: str, kind: FailureKind, trace: str, *, at_ms: int, seed: int
) -> FailTask:
    return FailTask(
        run_id=task.run_id,
        at_ms=at_ms,
        seed=seed,
        step_id=task.step_id,
        attempt=task.attempt,
        error=cut_text(error),
        kind=kind,
        traceback=cut_text(trace),
        life=life_of(task.msg_id),
    )


def decode_task(data: bytes) -> EnqueueTask:
    """A task message from its bytes.

    Raises:
        DecodeError: the bytes are not a task message.
    """
    try:
        return _task_decoder.decode(data)
    except msgspec.DecodeError as error:
        raise DecodeError(f"not a valid task message: {error}") from None


__all__ = [
    "NO_ENVELOPE",
    "Handler",
    "NonRetryableError",
    "ResultNotSentError",
    "RetryAfter",
    "TaskContext",
    "TaskEnvelope",
    "TaskResult",
    "Worker",
    "check_concurrency",
    "concurrency_max",
    "decode_task",
    "read_envelope",
    "short_traceback",
]
