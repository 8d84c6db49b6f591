"""In-memory implementations of the runtime's protocols, over virtual time: clocks, the event
log and the snapshot bucket here; work queues and timers in `memory_queue.py`.

The same seams `dagnats.runtime.protocols` defines for NATS, with the semantics written there:
an `EventLog` with expected-sequence conflicts and msg-id deduplication in a window; work
queues with ack wait, redelivery, `nak` delays and a delivery bound; durable timers that fire
into the command queue; clocks that read virtual time (plus a per-process offset).

The shared state (`MemoryEventLog`, `MemoryQueue`, `MemoryTimers`) is reached by one process
through *ports* bound to that process's `Gate`: the gate is where the simulator injects
faults (a crash raised at a named point, a delivery made late, an ack lost) and where a dead
process is stopped from touching the world. Without a gate (`NO_FAULTS`) the ports are plain
in-memory implementations. No method here ever suspends: every `await` on them completes
without yielding to the event loop.

This module may not read the wall clock, draw randomness or do I/O.
"""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from dagnats.runtime import settings as runtime_settings
from dagnats.sim import settings
from kernel.errors import AppendConflictError, PayloadTooLargeError
from kernel.state import RunState
from projections.snapshot import Snapshot, decode_snapshot, encode_snapshot, make_snapshot

NEVER_MS: Final = 2**62  # a deadline that never comes


class VirtualTime:
    """The simulator's true time, in milliseconds since the epoch; it only moves forward."""

    __slots__ = ("now_ms",)

    def __init__(self, start_ms: int = settings.epoch_ms) -> None:
        assert start_ms >= 0
        self.now_ms = start_ms

    def advance_to(self, at_ms: int) -> None:
        assert at_ms >= self.now_ms, f"time goes forward only: {at_ms} < {self.now_ms}"
        self.now_ms = at_ms


class ProcessClock:
    """`protocols.Clock` of one process: virtual time plus the process's clock error."""

    __slots__ = ("offset_ms", "time")

    def __init__(self, time: VirtualTime, offset_ms: int = 0) -> None:
        self.time = time
        self.offset_ms = offset_ms

    def now_ms(self) -> int:
        return self.time.now_ms + self.offset_ms


class Gate(Protocol):
    """Where one process meets the world: the simulator's fault hooks for that process."""

    def check(self, point: str) -> None:
        """Pass, or raise `SimulatedCrash` (the process dies at `point`)."""
        ...

    def delay_ms(self, point: str) -> int:
        """Extra latency for what the process publishes at `point` (0: on time)."""
        ...

    def lose(self, point: str) -> bool:
        """Whether the operation at `point` is lost on the way (an ack that never arrives)."""
        ...

    def publish_lost(self, point: str) -> str:
        """How a publish at `point` fails: "" (it does not), "lost" (never stored) or
        "unacked" (stored, its acknowledgement lost); either way the publisher sees an error."""
        ...


class _NoFaults:
    def check(self, point: str) -> None:
        return None

    def delay_ms(self, point: str) -> int:
        return 0

    def lose(self, point: str) -> bool:
        return False

    def publish_lost(self, point: str) -> str:
        return ""


NO_FAULTS: Final[Gate] = _NoFaults()


# -- the event log ------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class HistoryMessage:
    """One appended history message (a decision), as the stream stores it."""

    seq: int
    run_id: str
    payload: bytes
    msg_id: str
    at_ms: int  # virtual time of the append


def _seq_of(message: HistoryMessage) -> int:
    return message.seq


class MemoryEventLog:
    """The history stream: every run's subject, one global sequence, msg-id dedup."""

    def __init__(
        self,
        time: VirtualTime,
        *,
        duplicate_window_ms: int = settings.history_duplicate_window_ms,
    ) -> None:
        assert duplicate_window_ms > 0
        self.time = time
        self.duplicate_window_ms = duplicate_window_ms
        self.messages: list[HistoryMessage] = []
        self._by_run: dict[str, list[HistoryMessage]] = {}
        self._by_msg_id: dict[str, HistoryMessage] = {}
        self.listeners: list[Callable[[HistoryMessage], None]] = []

    def append_now(self, run_id: str, payload: bytes, msg_id: str, expected_last_seq: int) -> int:
        """`EventLog.append`, synchronously. Like JetStream, the sequence check comes first; a
        conflict whose last message carries this msg id is the earlier append landing."""
        assert expected_last_seq >= 0 and msg_id, (expected_last_seq, msg_id)
        if len(payload) > runtime_settings.history_message_bytes_max:
            raise PayloadTooLargeError(
                "history message", len(payload), runtime_settings.history_message_bytes_max
            )
        run = self._by_run.get(run_id)
        last = run[-1] if run else None
        last_seq = last.seq if last is not None else 0
        if last_seq != expected_last_seq:
            if last is not None and last.msg_id == msg_id:
                return last.seq
            raise AppendConflictError(run_id, expected_last_seq)
        seen = self._by_msg_id.get(msg_id)
        if seen is not None and self.time.now_ms - seen.at_ms < self.duplicate_window_ms:
            return seen.seq
        message = HistoryMessage(
            seq=len(self.messages) + 1,
            run_id=run_id,
            payload=payload,
            msg_id=msg_id,
            at_ms=self.time.now_ms,
        )
        self.messages.append(message)
        self._by_run.setdefault(run_id, []).append(message)
        self._by_msg_id[msg_id] = message
        for listener in self.listeners:
            listener(message)
        return message.seq

    def history(self, run_id: str) -> Sequence[HistoryMessage]:
        """Every message of the run, in order."""
        return self._by_run.get(run_id, ())

    def last_seq_now(self, run_id: str) -> int:
        run = self._by_run.get(run_id)
        return run[-1].seq if run else 0

    def run_ids(self) -> list[str]:
        return sorted(self._by_run)

    def run_count(self) -> int:
        return len(self._by_run)


class LogPort:
    """`protocols.EventLog` for one process, through its gate."""

    __slots__ = ("gate", "log")

    def __init__(self, log: MemoryEventLog, gate: Gate = NO_FAULTS) -> None:
        self.log = log
        self.gate = gate

    async def append(
        self, run_id: str, payload: bytes, *, msg_id: str, expected_last_seq: int
    ) -> int:
        self.gate.check("before_append")
        seq = self.log.append_now(run_id, payload, msg_id, expected_last_seq)
        self.gate.check("after_append")
        return seq

    async def read(self, run_id: str, *, after_seq: int = 0) -> AsyncIterator[tuple[int, bytes]]:
        assert after_seq >= 0
        self.gate.check("read")
        run = self.log.history(run_id)
        first = bisect.bisect_right(run, after_seq, key=_seq_of) if after_seq else 0
        for message in run[first:]:  # (a copy: as of the start of the read)
            yield message.seq, message.payload

    async def last_seq(self, run_id: str) -> int:
        self.gate.check("read")
        return self.log.last_seq_now(run_id)

    async def last(self, run_id: str) -> tuple[int, bytes] | None:
        self.gate.check("read")
        run = self.log.history(run_id)
        return (run[-1].seq, run[-1].payload) if run else None

    async def tail(self, after_seq: int) -> AsyncIterator[tuple[int, str, bytes]]:
        """Every message after `after_seq` appended so far. The simulator has no "later":
        where the runtime's tail waits, this one ends; a consumer calls it again."""
        assert after_seq >= 0
        self.gate.check("read")
        for message in list(self.log.messages[after_seq:]):
            yield message.seq, message.run_id, message.payload

    async def list_runs(self, limit: int) -> list[str]:
        assert limit > 0
        self.gate.check("read")
        return self.log.run_ids()[: min(limit, runtime_settings.runs_listed_max)]


# -- snapshots ----------------------------------------------------------------------------


class MemorySnapshots:
    """The run snapshot bucket: each run's latest snapshot, stored encoded as in the KV.

    Each stored value is decoded once (`decoded`): every engine incarnation of a seed loads every
    run at its start (`resume_all`), most of them from a snapshot nobody wrote since."""

    def __init__(self) -> None:
        self.stored: dict[str, bytes] = {}
        # run id -> the stored bytes last decoded (held: its identity says it is still the
        # stored value) and what they decoded to (`decode_snapshot` is a function of them)
        self._decoded: dict[str, tuple[bytes, Snapshot | None]] = {}

    def decoded(self, run_id: str) -> Snapshot | None:
        """The run's stored snapshot decoded (`decode_snapshot`: None when missing or not
        usable), decoded again only when another value was stored since."""
        data = self.stored.get(run_id)
        if not data:
            return None
        known = self._decoded.get(run_id)
        if known is not None and known[0] is data:
            return known[1]
        snapshot = decode_snapshot(data, run_id)
        self._decoded[run_id] = (data, snapshot)
        return snapshot

    def put(self, state: RunState, last_seq: int) -> None:
        self.stored[state.run_id] = encode_snapshot(make_snapshot(state, last_seq))

    def delete(self, run_id: str) -> None:
        self.stored.pop(run_id, None)


class SnapshotPort:
    """`projections.snapshot.SnapshotReader` for one process."""

    __slots__ = ("gate", "snapshots")

    def __init__(self, snapshots: MemorySnapshots, gate: Gate = NO_FAULTS) -> None:
        self.snapshots = snapshots
        self.gate = gate

    async def get(self, run_id: str) -> Snapshot | None:
        self.gate.check("read_snapshot")
        return self.snapshots.decoded(run_id)
