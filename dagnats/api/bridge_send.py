"""How the HTTP worker bridge sends a result and settles its task messages: the result
published until the server acknowledged it (the same bytes under the same message id each
time, as dagnats/worker.py sends them), then each delivery acked. dagnats/api/bridge.py
decides what to send; this module only sends it, for the `Lease` (a delivered task held for
an HTTP worker) it is given.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Literal, Protocol

from dagnats.api.bridge_wire import BridgeError, BridgeTask, BridgeUnavailableError, Status
from dagnats.runtime import settings
from dagnats.runtime.protocols import CommandPublisher, TaskMessage
from dagnats.worker import ResultNotSentError
from dagnats.worker_heartbeat import Heartbeat
from dagnats.worker_safety import render_error
from kernel import codec
from kernel.commands import CompleteTask, FailTask
from kernel.effects import EnqueueTask
from kernel.errors import DagnatsError

log = logging.getLogger("dagnats.bridge")


def task_token(deliveries: list[TaskMessage]) -> str | None:
    """The engine's token of the task these deliveries carry (runtime/task_tokens)."""
    return getattr(deliveries[0], "task_token", None) if deliveries else None


async def send_command(
    commands: CommandPublisher, command: CompleteTask | FailTask, kind: str, key: str,
    token: str | None, send_ms_max: int,
) -> None:  # fmt: skip
    """Publish until acknowledged, the same bytes under the same message id each time
    (`<kind>:<task message id>`, `key`: `<run>:<step>:<attempt>~<life>`), with the task's
    token (the engine takes results only for tasks it handed out).

    Raises:
        ResultNotSentError: not acknowledged within `send_ms_max`.
    """
    msg_id = f"{kind}:{key}"
    payload = codec.encode(command)
    loop = asyncio.get_running_loop()
    started = loop.time()
    delay_s = settings.result_retry_delay_ms_min / 1000
    for tries in range(1, 1_000_000):
        try:
            await commands.publish_command(command.run_id, payload, msg_id, token=token)
            return
        except DagnatsError:
            raise
        except Exception as error:
            left_s = started + send_ms_max / 1000 - loop.time()
            if left_s <= 0:
                waited_ms = int((loop.time() - started) * 1000)
                raise ResultNotSentError(msg_id, tries, waited_ms, render_error(error)) from None
            if tries == 1:
                log.warning("%s not acknowledged (%s); sending it again", msg_id, error)
            await asyncio.sleep(min(delay_s, left_s))
            delay_s = min(delay_s * 2, settings.result_retry_delay_ms_max / 1000)
    raise AssertionError("unreachable: the send loop is bounded by its time")


def not_stored_error(task_id: str, error: DagnatsError) -> BridgeUnavailableError:
    """The answer to a result given up (its task comes back, reported lost): not stored when
    refused before it was sent; maybe stored when only its acknowledgements were lost."""
    if isinstance(error, ResultNotSentError):
        return BridgeUnavailableError(
            f"the result of task {task_id[:80]!r} was not acknowledged, so it may or may not be "
            f"stored: {render_error(error)}",
            "stored, the run goes on; if not, its task will be delivered again after its "
            "heartbeat timeout, its attempt reported lost, and run again",
        )
    return BridgeUnavailableError(
        f"the result of task {task_id[:80]!r} was not stored: {render_error(error)}",
        "its task will be delivered again after its heartbeat timeout, its attempt reported "
        "lost, and run again",
    )


async def answers_once_sent(
    answers: list[Status | BridgeError], jobs: dict[int, asyncio.Task[BridgeError | None]],
    wait_ms: int,
) -> list[Status | BridgeError]:  # fmt: skip
    """`answers` (by item) once the sends `jobs` (by item) are done, waiting at most
    `wait_ms`: "sending" for those not done in time, the error of those not stored."""
    if not jobs:
        return answers
    _, pending = await asyncio.wait(jobs.values(), timeout=wait_ms / 1000)
    for index, job in jobs.items():
        if isinstance(answers[index], BridgeError):
            continue
        if job in pending:
            answers[index] = "sending"
        elif not job.cancelled() and (unsent := job.result()) is not None:
            answers[index] = unsent
    return answers


async def handed_over(
    leases: Mapping[str, Lease], tasks: list[BridgeTask], ack_wait_ms: int, heartbeat_ms: int
) -> list[BridgeTask]:
    """`tasks`, leased a while ago (while results were sent), as handed over now: one whose
    lease ran out is left out (the server delivers it again); one older than a heartbeat
    interval is heartbeated, its lease restarted (the worker counts `lease_ms` from now)."""
    assert 0 < heartbeat_ms <= ack_wait_ms, (heartbeat_ms, ack_wait_ms)
    now = asyncio.get_running_loop().time()
    kept: list[BridgeTask] = []
    for task in tasks:
        lease = leases.get(task.id)
        if lease is None or lease.state != "held" or lease.expires_at <= now:
            continue
        if lease.expires_at - now < (ack_wait_ms - heartbeat_ms) / 1000:
            try:
                for message in list(lease.deliveries):
                    await message.in_progress()
                lease.expires_at = asyncio.get_running_loop().time() + ack_wait_ms / 1000
            except Exception as error:  # (its lease runs on until its expiry)
                log.info("heartbeating %s failed: %s", lease.key, render_error(error))
        kept.append(task)
    return kept


def log_abandoned(job: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a job nobody awaits any more (a poll whose request was
    cancelled): its failure is logged, not left "never retrieved"."""
    if not job.cancelled() and (error := job.exception()) is not None:
        log.warning("an abandoned poll failed: %s", render_error(error))


async def ack_quietly(message: TaskMessage, key: str) -> None:
    """Ack a delivery; a lost ack is logged (the delivery comes back and is acked then)."""
    try:
        await message.ack()
    except Exception as error:
        log.info("acking %s failed (it comes back and is acked then): %s", key, error)


class Lease:
    """A delivered task message held for an HTTP worker (dagnats/api/bridge.py)."""

    __slots__ = ("deliveries", "expires_at", "handed_at_ms", "id", "key", "state", "task",
                 "worker_id")  # fmt: skip

    def __init__(self, task_id: str, task: EnqueueTask, message: TaskMessage, worker_id: str,
                 handed_at_ms: int, expires_at: float) -> None:  # fmt: skip
        self.id = task_id
        self.task = task
        self.key = task.msg_id  # `<run>:<step>:<attempt>~<life>` (kernel/effects.task_msg_id)
        self.deliveries = [message]
        self.worker_id = worker_id
        self.handed_at_ms = handed_at_ms
        self.expires_at = expires_at
        self.state: Literal["held", "settling", "sent"] = "held"


class Settling(Protocol):
    """A lease as a batch sees it: "settling" while its result is being sent."""

    @property
    def state(self) -> str: ...

    @property
    def deliveries(self) -> list[TaskMessage]: ...


class SendBatch:
    """Leases whose results are being sent together: their deliveries are heartbeated (one
    `worker_heartbeat.Heartbeat`, after a heartbeat interval) until every result is
    acknowledged."""

    __slots__ = ("heartbeat", "leases", "left")

    def __init__(self) -> None:
        self.leases: list[Settling] = []
        self.left = 0
        self.heartbeat: Heartbeat | None = None

    def arm(self, heartbeat_ms: int) -> None:
        """Start counting the sends: heartbeat if they last a heartbeat interval."""
        assert heartbeat_ms > 0, heartbeat_ms
        self.left += sum(1 for lease in self.leases if lease.state == "settling")
        if self.left > 0:
            self.heartbeat = Heartbeat(self._settling, heartbeat_ms, log)

    def _settling(self) -> list[TaskMessage]:
        """The deliveries of the results still being sent."""
        return [m for lease in self.leases if lease.state == "settling" for m in lease.deliveries]

    def one_done(self) -> None:
        """A result of the batch is acknowledged (or given up): stop beating after the last."""
        self.left -= 1
        if self.left <= 0 and self.heartbeat is not None:
            self.heartbeat.cancel()
