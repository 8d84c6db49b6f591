"""The HTTP worker bridge: the tasks of the native workers, for workers in any language.

`TaskBridge` takes task messages from the same durable consumers a native `Worker` uses (one
per task type on `dagnats.task.<type>`, runtime/queue.py), holds each delivered message under
an opaque task id (a lease), and turns an HTTP worker's complete, fail and heartbeat into
exactly what a native worker does: `CompleteTask` / `FailTask` published under
`result:<run>:<step>:<attempt>` until the server acknowledged it, `in_progress` for a
heartbeat, a lost attempt reported under `lost:<run>:<step>:<attempt>`. The rules are those
of dagnats/worker.py:

- A lease lasts `ack_wait_ms` (the consumer's heartbeat timeout) from the poll or the last
  heartbeat. Past it the id is unknown (`TaskNotFoundError`, 404) and the server delivers the
  task again; whoever takes that delivery (a bridge or a native worker) reports the attempt
  lost, and the engine schedules the next attempt without counting it against the policy.
- A delivery of an attempt this bridge holds rides along with its lease (heartbeated and acked
  with it); one of an attempt it settled is acked; a second or later delivery of an attempt it
  does not hold is reported lost and acked. An undecodable message goes to the dead letters.
- The first complete or fail settles a lease; its result is sent (the task heartbeated
  meanwhile) and the deliveries are acked once the server acknowledged it. A second complete
  or fail of a settled id is refused (`TaskSettledError`, 409) and sends nothing.
- An output a native worker would refuse (deeper than `json_depth_max`, over
  `payload_bytes_max`, an agent turn not completed with continue/done) is recorded as the same
  `invalid_output` failure (`OutputRefusedError`, 422). An attempt past its deadline sends
  nothing (the engine's step timer records the timeout; `DeadlinePassedError`, 409).

A poll that is abandoned (its HTTP request cancelled) still leases what it took: those tasks
come back after the heartbeat timeout, as from a vanished worker. Bounds: settings.bridge_*.
This module does no HTTP (dagnats/api/bridge_routes.py does); it publishes commands and settles
task messages of the worker role only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import msgspec

from dagnats.agent import Continue, Done, read_turn_input
from dagnats.api import bridge_send
from dagnats.api.bridge_send import Lease, SendBatch, ack_quietly, send_command, task_token
from dagnats.api.bridge_wire import (
    AgentTurnView,
    BridgeBusyError,
    BridgeError,
    BridgeTask,
    BridgeUnavailableError,
    DeadlinePassedError,
    OutputRefusedError,
    ResultItem,
    Status,
    TaskNotFoundError,
    TaskSettledError,
    check_poll,
    check_retry_after,
    checked_output,
)
from dagnats.runtime import settings
from dagnats.runtime.clock import new_seed, now_ms
from dagnats.runtime.connection import Connection
from dagnats.runtime.outage import OutageLog
from dagnats.runtime.protocols import Clock, CommandPublisher, DeadLetters, TaskMessage, TaskQueue
from dagnats.worker import decode_task, read_envelope
from dagnats.worker_safety import cut_text, render_error
from kernel import limits
from kernel.commands import CompleteTask, FailTask, FailureKind
from kernel.effects import EnqueueTask, attempt_key, life_of
from kernel.errors import DagnatsError, DecodeError

log = logging.getLogger("dagnats.bridge")
T = TypeVar("T")


@runtime_checkable
class ReadyTaskQueue(Protocol):
    """A task queue that can take what is waiting without waiting (`fetch_ready`: the
    bridge's sweep)."""

    async def fetch_ready(self, task_type: str, *, batch: int) -> Sequence[TaskMessage]: ...


class TaskBridge:
    """Tasks for HTTP workers: poll, complete, fail, heartbeat (see the module doc)."""

    def __init__(
        self,
        tasks: TaskQueue,
        commands: CommandPublisher,
        dead: DeadLetters,
        *,
        ack_wait_ms: int = settings.task_ack_wait_ms_default,
        worker_id: str | None = None,
        clock: Clock | None = None,
        seeds: Callable[[], int] | None = None,
    ) -> None:
        assert 0 < ack_wait_ms <= settings.timer_horizon_ms_max, ack_wait_ms
        self.tasks = tasks
        self.ready = tasks if isinstance(tasks, ReadyTaskQueue) else None
        self.commands = commands
        self.dead = dead
        self.ack_wait_ms = ack_wait_ms
        self.heartbeat_ms = max(1, ack_wait_ms // 3)
        self.worker_id = worker_id or f"http-bridge-{socket.gethostname()}-{os.getpid()}"
        self.now_ms: Callable[[], int] = clock.now_ms if clock is not None else now_ms
        self.new_seed: Callable[[], int] = seeds if seeds is not None else new_seed
        self.result_send_ms_max = settings.result_send_ms_max
        self.result_wait_ms = settings.bridge_result_wait_ms
        self._leases: dict[str, Lease] = {}
        self._by_key: dict[str, Lease] = {}
        self._settled: OrderedDict[str, str] = OrderedDict()  # task id -> how
        self._finished: OrderedDict[str, None] = OrderedDict()  # settled attempt keys
        self._locks: dict[str, asyncio.Lock] = {}
        self._sending: set[asyncio.Task[Any]] = set()
        self._turn = 0
        self._outage = OutageLog(log, "fetching tasks for HTTP workers", quiet_failures=1)
        self.connection: Connection | None = None

    @classmethod
    async def open(
        cls,
        url: str | None = None,
        *,
        data_dir: Path | None = None,
        ack_wait_ms: int = settings.task_ack_wait_ms_default,
        worker_id: str | None = None,
    ) -> TaskBridge:
        """A bridge on its own connection with the `worker` role's credential. Its ack wait
        becomes the task consumers' heartbeat timeout, as a native worker's does.

        Raises:
            ConnectError: the server cannot be reached, or refused the credential.
        """
        connection = await Connection.open(
            url, task_ack_wait_ms=ack_wait_ms, role="worker", data_dir=data_dir
        )
        queue = connection.commands
        bridge = cls(connection.tasks, queue, queue, ack_wait_ms=ack_wait_ms, worker_id=worker_id)
        bridge.connection = connection
        return bridge

    async def close(self) -> None:
        """Let results being sent finish (at most `drain_results_ms_max`), then close the
        connection if the bridge opened it. Held leases come back after the timeout."""
        if self._sending:
            await asyncio.wait(self._sending, timeout=settings.drain_results_ms_max / 1000)
        if self.connection is not None:
            await self.connection.close()

    @property
    def held(self) -> int:
        """Leases held now (settling ones included)."""
        return len(self._leases)

    # -- poll -------------------------------------------------------------------------------

    async def poll(
        self, task_types: Sequence[str], *, max_tasks: int = 1, timeout_ms: int = 0,
        worker_id: str = "",
    ) -> list[BridgeTask]:  # fmt: skip
        """Up to `max_tasks` tasks of `task_types`, waiting at most `timeout_ms` for the
        first; [] when none came. Each is leased under a fresh id.

        Raises:
            BridgeRequestError: a task type, max_tasks, timeout_ms or worker_id out of bounds.
            BridgeBusyError: the bridge holds `bridge_leases_max` tasks already.
        """
        job = self._start_poll(task_types, max_tasks, timeout_ms, worker_id)
        return await asyncio.shield(job)  # cancelled: what it takes is leased (and expires)

    def _start_poll(
        self, task_types: Sequence[str], max_tasks: int, timeout_ms: int, worker_id: str,
        sending: int = 0,
    ) -> asyncio.Future[list[BridgeTask]]:  # fmt: skip
        """The poll, checked and started; `sending` leases (results just sent, which a poll
        after their acknowledgements would find released) are not counted as held."""
        types = check_poll(task_types, max_tasks, timeout_ms, worker_id)
        self._reap()
        held = len(self._leases) - sending
        assert held >= 0, (len(self._leases), sending)
        if held + max_tasks > settings.bridge_leases_max:
            raise BridgeBusyError(
                f"the bridge holds {held} tasks; a poll of {max_tasks} more would "
                f"pass the limit of {settings.bridge_leases_max}",
                "complete, fail or let expire the tasks held, then poll again",
            )
        return asyncio.ensure_future(
            self._poll(types, max_tasks, timeout_ms, worker_id or self.worker_id)
        )

    async def _poll(
        self, types: list[str], max_tasks: int, timeout_ms: int, worker_id: str
    ) -> list[BridgeTask]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        taken: list[BridgeTask] = []
        for _ in range(settings.bridge_poll_rounds_max):
            self._turn = (self._turn + 1) % len(types)
            order = types[self._turn :] + types[: self._turn]
            for name in order:
                if len(taken) >= max_tasks:
                    break
                messages = await self._pull(name, max_tasks - len(taken), 0, deadline)
                taken += await self._accept(messages, worker_id)
            left_ms = int((deadline - loop.time()) * 1000)
            if taken or left_ms <= 0:
                return taken
            many = len(types) > 1
            slice_ms = settings.bridge_poll_slice_many_ms if many else settings.bridge_poll_slice_ms
            waits = [self._pull(n, 1, min(left_ms, slice_ms), deadline) for n in order[:max_tasks]]
            for messages in await asyncio.gather(*waits):
                taken += await self._accept(messages, worker_id)
        return taken

    async def _pull(
        self, name: str, batch: int, wait_ms: int, deadline: float
    ) -> Sequence[TaskMessage]:
        """What waits on `name` (at most `batch`), or a long pull of `wait_ms`; one pull at a
        time per task type (a pull subscription's inbox is shared); [] after a failure."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        loop = asyncio.get_running_loop()
        if lock.locked():  # (a free lock at once: wait_for with a 0 s timeout never acquires)
            try:
                await asyncio.wait_for(lock.acquire(), timeout=max(0.0, deadline - loop.time()))
            except TimeoutError:
                return []
        else:
            await lock.acquire()
        try:
            if wait_ms > 0:
                messages = await self.tasks.fetch(name, batch=batch, timeout_ms=wait_ms)
            elif self.ready is not None:
                messages = await self.ready.fetch_ready(name, batch=batch)
            else:
                messages = await self.tasks.fetch(name, batch=batch, timeout_ms=1)
        except Exception as error:
            self._outage.failed(f"{name}: {render_error(error)}")
            backoff_s = min(0.5, max(0.0, deadline - loop.time()))
            await asyncio.sleep(backoff_s)
            return []
        finally:
            lock.release()
        self._outage.recovered()
        assert len(messages) <= batch, (len(messages), batch)
        return messages

    async def _accept(self, messages: Sequence[TaskMessage], worker_id: str) -> list[BridgeTask]:
        """Lease each message for an HTTP worker, or settle it as a native worker would."""
        self._reap()
        leased: list[BridgeTask] = []
        for message in messages:
            try:
                task = decode_task(message.data)
            except DecodeError as error:
                await self.dead.publish_dead("task", message.data, str(error))
                await message.term()
                continue
            key = task.msg_id  # this attempt of this life of the run
            riding = self._by_key.get(key)
            if riding is not None:  # the server sent a held attempt again: it rides along
                riding.deliveries.append(message)
                continue
            if key in self._finished:  # settled here; the server forgot our ack
                await message.ack()
                continue
            if message.num_delivered > 1:
                reason = (
                    f"worker lost: the task was delivered again (delivery {message.num_delivered})"
                )
                self._start_sending([message], self._lost(task, reason, "lost"), "lost", key)
                continue
            lease = self._lease(task, message, worker_id)
            view = self._view(lease)
            if view is None:
                continue
            leased.append(view)
        return leased

    def _lease(self, task: EnqueueTask, message: TaskMessage, worker_id: str) -> Lease:
        task_id = secrets.token_urlsafe(18)
        expires_at = asyncio.get_running_loop().time() + self.ack_wait_ms / 1000
        lease = Lease(task_id, task, message, worker_id, self.now_ms(), expires_at)
        self._leases[task_id] = lease
        self._by_key[lease.key] = lease
        return lease

    def _view(self, lease: Lease) -> BridgeTask | None:
        """The task as the HTTP worker sees it; None (and failed for good, as a native worker
        does) when its input or metadata cannot be read."""
        task = lease.task
        envelope = read_envelope(task)
        try:
            metadata = msgspec.json.decode(bytes(task.metadata))
            input_raw, agent = bytes(task.input), None
            if envelope.turn > 0:
                turn = read_turn_input(input_raw)
                input_raw = turn.input_raw
                agent = AgentTurnView(turn=envelope.turn, state=turn.state,
                                      tool_results=turn.tool_results, usage=turn.usage)  # fmt: skip
            msgspec.json.decode(input_raw)  # (readable JSON, as a handler's ctx.input)
        except (msgspec.DecodeError, ValueError, TypeError) as error:
            message = f"the task's input or metadata cannot be read: {render_error(error)}"
            self._settle(lease, self._lost(lease.task, message, "non_retryable"), "failed")
            return None
        return BridgeTask(
            id=lease.id, task=task.task, run_id=task.run_id, step_id=task.step_id,
            attempt=task.attempt, deadline_ms=task.deadline_ms,
            idempotency_key=attempt_key(task.run_id, task.step_id, task.attempt),
            lease_ms=self.ack_wait_ms, heartbeat_ms=self.heartbeat_ms,
            input=msgspec.Raw(input_raw), metadata=metadata,
            previous_errors=envelope.previous_errors, history_events=task.history_events,
            should_continue_as_new=task.history_events >= limits.history_events_soft_max,
            agent=agent,
        )  # fmt: skip

    def _reap(self) -> None:
        """Forget held leases past their expiry (their messages come back from the server)."""
        now = asyncio.get_running_loop().time()
        expired = [
            lease for lease in self._leases.values()
            if lease.state == "held" and lease.expires_at <= now
        ]  # fmt: skip
        for lease in expired:
            del self._leases[lease.id]
            if self._by_key.get(lease.key) is lease:
                del self._by_key[lease.key]
        if expired:
            log.info("%d HTTP task lease(s) expired without a heartbeat", len(expired))

    # -- heartbeat, complete, fail ----------------------------------------------------------

    async def heartbeat(self, task_id: str) -> int:
        """Keep the task: restart its heartbeat timeout; the lease's new length in ms.

        Raises:
            TaskNotFoundError: unknown id, or its lease expired.
            TaskSettledError: already completed or failed.
        """
        self._reap()
        lease = self._held(task_id)
        try:
            for message in list(lease.deliveries):
                await message.in_progress()
        except Exception as error:
            raise BridgeUnavailableError(
                f"the heartbeat of task {task_id[:80]!r} did not reach NATS: {render_error(error)}",
                "heartbeat again soon: the lease runs on until its expiry",
            ) from None
        lease.expires_at = asyncio.get_running_loop().time() + self.ack_wait_ms / 1000
        return self.ack_wait_ms

    async def complete(
        self, task_id: str, output: object = None, *, turn: Continue | Done | None = None
    ) -> Status:
        """Complete the task with `output` (an agent turn: with `turn`); "completed" once the
        server acknowledged the result, "sending" while it is still being sent.

        Raises:
            TaskNotFoundError, TaskSettledError: as for `heartbeat`.
            DeadlinePassedError: the attempt is past its deadline (nothing is sent).
            OutputRefusedError: recorded as an invalid_output failure, as a native worker's.
            BridgeRequestError: `turn` for a task that is no agent turn (nothing is settled).
        """
        [answer] = await self.settle([ResultItem(task_id, output, turn)])
        if isinstance(answer, BridgeError):
            raise answer
        return answer

    async def fail(
        self, task_id: str, error: str, *, retryable: bool = True,
        retry_after_ms: int | None = None, traceback: str = "",
    ) -> Status:  # fmt: skip
        """Fail the attempt: retryable (the step's retry policy decides, no sooner than
        `retry_after_ms` when given) or not (the step fails for good).

        Raises:
            TaskNotFoundError, TaskSettledError, DeadlinePassedError: as for `complete`.
            BridgeRequestError: retry_after_ms out of bounds, or given with retryable false.
        """
        item = ResultItem(task_id, error=error, retryable=retryable,
                          retry_after_ms=retry_after_ms, traceback=traceback)  # fmt: skip
        [answer] = await self.settle([item])
        if isinstance(answer, BridgeError):
            raise answer
        return answer

    async def settle(self, items: Sequence[ResultItem]) -> list[Status | BridgeError]:
        """Complete or fail each item's task (as `complete` / `fail`), all results sent at
        once; one answer per item, in order: its status, or the error refusing it (that item
        changes nothing of the others). Waits at most `bridge_result_wait_ms` for the
        server's acknowledgements; a result not acknowledged by then is "sending"."""
        return await self._answers(*self._start_settling(items))

    async def settle_then_poll(
        self, items: Sequence[ResultItem], task_types: Sequence[str], *, max_tasks: int = 1,
        timeout_ms: int = 0, worker_id: str = "",
    ) -> tuple[list[Status | BridgeError], list[BridgeTask] | BridgeError]:  # fmt: skip
        """`settle`, then `poll` (its tasks, or the error refusing it: the results stand),
        the poll taken while the results are sent (a round trip each, independent)."""
        answers, jobs = self._start_settling(items)
        try:
            polling = self._start_poll(task_types, max_tasks, timeout_ms, worker_id, len(jobs))
        except BridgeError as error:
            return await self._answers(answers, jobs), error
        try:
            answers = await self._answers(answers, jobs)
        except asyncio.CancelledError:  # abandoned: what the poll takes is leased (and expires)
            polling.add_done_callback(bridge_send.log_abandoned)
            raise
        tasks = await asyncio.shield(polling)  # (leased a while ago: as handed over now)
        return answers, await bridge_send.handed_over(
            self._leases, tasks, self.ack_wait_ms, self.heartbeat_ms)  # fmt: skip

    def _start_settling(
        self, items: Sequence[ResultItem]
    ) -> tuple[list[Status | BridgeError], dict[int, asyncio.Task[BridgeError | None]]]:
        """Each item's answer so far, and the sends of the results settled (by index)."""
        assert len(items) <= settings.bridge_poll_tasks_max, len(items)
        self._reap()
        answers: list[Status | BridgeError] = []
        jobs: dict[int, asyncio.Task[BridgeError | None]] = {}
        batch = SendBatch()
        for index, item in enumerate(items):
            try:
                lease, command, how, refusal = self._prepare(item)
            except BridgeError as error:
                answers.append(error)
                continue
            jobs[index] = self._settle(lease, command, how, batch)
            settled: Status = "completed" if isinstance(command, CompleteTask) else "failed"
            answers.append(refusal or settled)
        if jobs:
            batch.arm(self.heartbeat_ms)
        return answers, jobs

    async def _answers(
        self, answers: list[Status | BridgeError],
        jobs: dict[int, asyncio.Task[BridgeError | None]],
    ) -> list[Status | BridgeError]:  # fmt: skip
        return await bridge_send.answers_once_sent(answers, jobs, self.result_wait_ms)

    def _prepare(
        self, item: ResultItem
    ) -> tuple[Lease, CompleteTask | FailTask, str, BridgeError | None]:
        """The held lease of `item`, the command that settles it, how, and (an output refused)
        the error to answer once the invalid_output failure is sent.

        Raises:
            BridgeError: the item is refused; nothing is settled.
        """
        if item.error is not None:
            check_retry_after(item.retryable, item.retry_after_ms)
        lease = self._held(item.id)
        self._check_deadline(lease)
        if item.error is not None:
            kind: FailureKind = "error" if item.retryable else "non_retryable"
            failed = self._fail(lease, item.error or "failed (no message)", kind, item.traceback)
            failed = msgspec.structs.replace(failed, retry_after_ms=item.retry_after_ms)
            return lease, failed, "failed", None
        encoded, problem = checked_output(item, read_envelope(lease.task).turn > 0)
        if problem is not None:
            refusal = OutputRefusedError(
                f"{problem}; recorded as an invalid_output failure of attempt {lease.task.attempt}",
                "the step's retry policy decides whether it runs again",
            )
            failed = self._fail(lease, problem, "invalid_output")
            return lease, failed, "failed (invalid output)", refusal
        command = CompleteTask(
            run_id=lease.task.run_id, at_ms=self.now_ms(), seed=self.new_seed(),
            step_id=lease.task.step_id, attempt=lease.task.attempt,
            output=msgspec.Raw(encoded), worker_id=lease.worker_id,
            started_at_ms=lease.handed_at_ms, life=life_of(lease.task.msg_id),
        )  # fmt: skip
        return lease, command, "completed", None

    def _held(self, task_id: str) -> Lease:
        """The lease of `task_id`, held (the caller reaped expired leases first)."""
        lease = self._leases.get(task_id)
        if lease is None:
            how = self._settled.get(task_id)
            if how is not None:
                raise TaskSettledError(task_id, how)
            raise TaskNotFoundError(task_id)
        if lease.state != "held":
            raise TaskSettledError(task_id, self._settled.get(task_id, "settled"))
        return lease

    def _check_deadline(self, lease: Lease) -> None:
        deadline_ms = lease.task.deadline_ms
        if deadline_ms is None or self.now_ms() <= deadline_ms:
            return
        self._remember(lease, "past its deadline")
        self._release(lease)
        for message in lease.deliveries:
            self._spawn(ack_quietly(message, lease.key))
        raise DeadlinePassedError(
            f"task {lease.id[:80]!r} (attempt {lease.task.attempt} of step "
            f"{lease.task.step_id!r}) passed its deadline {deadline_ms}; nothing was sent",
            "the step's timeout is recorded by the engine, which retries per the step's policy",
        )

    def _settle(
        self, lease: Lease, command: CompleteTask | FailTask, how: str,
        batch: SendBatch | None = None,
    ) -> asyncio.Task[BridgeError | None]:  # fmt: skip
        """Mark the lease settled (now, before any await: a second settle is refused) and
        send its result in a task of its own, its deliveries heartbeated (with the rest of
        `batch`) while it is not acknowledged."""
        assert lease.state == "held", lease.state
        lease.state = "settling"
        self._remember(lease, how)
        alone = batch is None
        batch = SendBatch() if batch is None else batch
        batch.leases.append(lease)
        if alone:
            batch.arm(self.heartbeat_ms)
        return self._spawn(self._send_result(lease, command, batch))

    def _remember(self, lease: Lease, how: str) -> None:
        self._settled[lease.id] = how
        while len(self._settled) > settings.bridge_settled_remembered_max:
            self._settled.popitem(last=False)

    def _release(self, lease: Lease) -> None:
        """The attempt is done here: forget the lease, remember the attempt."""
        self._leases.pop(lease.id, None)
        if self._by_key.get(lease.key) is lease:
            del self._by_key[lease.key]
        self._finished[lease.key] = None
        while len(self._finished) > settings.bridge_settled_remembered_max:
            self._finished.popitem(last=False)

    async def _send_result(
        self, lease: Lease, command: CompleteTask | FailTask, batch: SendBatch
    ) -> BridgeError | None:
        """Send the result; once acknowledged, forget the lease and ack its deliveries (only
        then: a crash before leaves them to come back, reported lost). Not stored (given up,
        or refused before it was sent): the error to answer, the deliveries left to come back."""
        try:
            await send_command(self.commands, command, "result", lease.key,
                               task_token(lease.deliveries), self.result_send_ms_max)  # fmt: skip
        except DagnatsError as error:  # (ResultNotSentError, or one the publisher refused)
            log.error("the result of %s was given up: %s", lease.key, error)
            self._leases.pop(lease.id, None)  # its deliveries come back: reported lost
            self._by_key.pop(lease.key, None)
            self._settled.pop(lease.id, None)  # sent again: unknown (404), not "completed"
            return bridge_send.not_stored_error(lease.id, error)
        finally:
            lease.state = "sent"
            batch.one_done()
        self._release(lease)
        for message in lease.deliveries:
            await ack_quietly(message, lease.key)
        return None

    def _start_sending(
        self, deliveries: list[TaskMessage], command: FailTask, kind: str, key: str
    ) -> None:
        """Report a lost attempt (in the background, as a native worker does), then ack."""

        async def report() -> None:
            try:
                await send_command(self.commands, command, kind, key, task_token(deliveries),
                                   self.result_send_ms_max)  # fmt: skip
            except DagnatsError as error:  # (given up, or one the publisher refused)
                log.error("%s", error)
                return
            for message in deliveries:
                await ack_quietly(message, f"{command.run_id}:{command.step_id}")

        self._spawn(report())

    def _spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        job: asyncio.Task[T] = asyncio.ensure_future(work)
        self._sending.add(job)
        job.add_done_callback(self._sending.discard)
        return job

    def _fail(self, lease: Lease, error: str, kind: FailureKind, trace: str = "") -> FailTask:
        """The FailTask of the lease's attempt, by the HTTP worker that held it."""
        return msgspec.structs.replace(
            self._lost(lease.task, error, kind, trace), worker_id=lease.worker_id,
            started_at_ms=lease.handed_at_ms,
        )  # fmt: skip

    def _lost(self, task: EnqueueTask, error: str, kind: FailureKind, trace: str = "") -> FailTask:
        return FailTask(
            run_id=task.run_id, at_ms=self.now_ms(), seed=self.new_seed(), step_id=task.step_id,
            attempt=task.attempt, error=cut_text(error), kind=kind, traceback=cut_text(trace),
            life=life_of(task.msg_id),
        )  # fmt: skip

