"""The I/O seams the engine core talks through: event log, queues, timers, clock.

The same engine runs on NATS JetStream (`dagnats.runtime.log`, `.queue`, `.timers`) and on the
in-memory simulator (`dagnats.sim`), because it only sees these protocols. Both sides must
honour the semantics written here; the contract tests run one suite against both.

Conventions: times are integer milliseconds (`*_ms`), sequences are positive stream sequence
numbers with 0 meaning "none yet", payloads are opaque bytes (the codec lives in `kernel`).

This module holds protocols only: no implementation, no I/O, no project imports but typing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time, the only source of `at_ms` stamps the shell puts into commands."""

    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch (UTC)."""
        ...


class EventLog(Protocol):
    """The append-only history of runs: one subject (ordered message list) per run."""

    async def append(
        self, run_id: str, payload: bytes, *, msg_id: str, expected_last_seq: int
    ) -> int:
        """Append one message to the run's history if its last sequence is still as expected.

        Args:
            run_id: the run (a safe subject token).
            payload: one encoded decision (command + events), at most
                `settings.history_message_bytes_max` bytes.
            msg_id: idempotency key, unique across all runs (include the run id); appending
                the same msg_id again within the duplicate window returns the sequence of the
                first append instead of appending.
            expected_last_seq: the sequence of the run's last message (0: it has none).
        Returns:
            The stream sequence of the appended (or deduplicated) message.
        Raises:
            AppendConflictError: the run's history moved past `expected_last_seq`.
            PayloadTooLargeError: the payload is over the bound.
        """
        ...

    def read(self, run_id: str, *, after_seq: int = 0) -> AsyncIterator[tuple[int, bytes]]:
        """Every message of the run with a sequence > after_seq, in order, as (seq, payload).

        Ends at the run's last message as of the start of the read (never waits for more);
        an unknown run yields nothing. Memory stays bounded whatever the history length.
        """
        ...

    async def last_seq(self, run_id: str) -> int:
        """The sequence of the run's last message; 0 when it has none."""
        ...

    async def last(self, run_id: str) -> tuple[int, bytes] | None:
        """The run's last message as (seq, payload); None when it has none."""
        ...

    def tail(self, after_seq: int) -> AsyncIterator[tuple[int, str, bytes]]:
        """Every history message of every run with a sequence > after_seq, as
        (seq, run_id, payload), in stream order; live: it waits for new messages forever.
        """
        ...

    async def list_runs(self, limit: int) -> list[str]:
        """Ids of runs that have history, at most `limit` of them, sorted."""
        ...


class QueueMessage(Protocol):
    """One delivered message of a work queue (a task or a command), to be settled once."""

    @property
    def subject(self) -> str:
        """The subject it was published on."""
        ...

    @property
    def data(self) -> bytes:
        """Its payload."""
        ...

    @property
    def num_delivered(self) -> int:
        """How many times it has been delivered, this delivery included (1 = first)."""
        ...

    async def ack(self) -> None:
        """Done: remove it from the queue."""
        ...

    async def nak(self, delay_ms: int = 0) -> None:
        """Not done: deliver it again after delay_ms (counts toward the delivery bound)."""
        ...

    async def in_progress(self) -> None:
        """Still working (the heartbeat): restart its ack wait."""
        ...

    async def term(self) -> None:
        """Never deliver it again, without success (poison message)."""
        ...


CommandMessage = QueueMessage
TaskMessage = QueueMessage


class TaskPublisher(Protocol):
    """Where the engine puts task messages for workers."""

    async def publish(self, task_type: str, payload: bytes, msg_id: str) -> None:
        """Enqueue a task of `task_type`; a msg_id seen within the duplicate window is dropped."""
        ...


class TaskQueue(TaskPublisher, Protocol):
    """The task work queues: one queue per task type, each message delivered to one worker.

    A message not acked within the ack wait (the heartbeat timeout; `in_progress` restarts
    it) is delivered again, up to a bounded number of deliveries.
    """

    async def fetch(
        self, task_type: str, *, batch: int, timeout_ms: int
    ) -> Sequence[TaskMessage]:
        """Up to `batch` task messages; waits at most timeout_ms; [] when none came."""
        ...


class CommandPublisher(Protocol):
    """Where clients, workers and the API put commands for the engine."""

    async def publish_command(
        self, run_id: str, payload: bytes, msg_id: str, *, token: str | None = None
    ) -> None:
        """Enqueue a command for the run; a msg_id seen within the duplicate window is dropped.
        `token`: the task token a result carries (runtime/task_tokens), if any."""
        ...


class CommandQueue(CommandPublisher, Protocol):
    """The engine's side of the commands: fetched in batches, acked after processing."""

    async def fetch_commands(
        self, *, batch: int, timeout_ms: int
    ) -> Sequence[CommandMessage]:
        """Up to `batch` commands in arrival order; waits at most timeout_ms; [] if none came."""
        ...


class DeadLetters(Protocol):
    """Messages set aside with the reason they could not be processed."""

    async def publish_dead(self, kind: str, payload: bytes, reason: str) -> None:
        """Keep `payload` under `kind` (a safe subject token) with a one-line `reason`."""
        ...


class Timers(Protocol):
    """Durable timers: at `fire_at_ms` the payload (an encoded FireTimer command) is delivered
    as a command of the run. Arming an armed timer id replaces it (it fires once, at the
    new time); a due time in the past fires at once; timers survive restarts.
    """

    async def arm(self, run_id: str, timer_id: str, fire_at_ms: int, payload: bytes) -> None:
        """Arm (or re-arm) the run's timer `timer_id`."""
        ...

    async def cancel(self, run_id: str, timer_id: str) -> None:
        """Disarm it; cancelling an unknown or fired timer is not an error."""
        ...


TimerService = Timers
