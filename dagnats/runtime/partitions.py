"""Partitioned commands: each partition of `dagnats.cmd.<partition>.>` has one engine at a time.

The partition count is chosen at the first partitioned start (`serve --partitions N`, else
`settings.partitions_default`) and stored create-only in the cluster bucket (`dagnats_cluster`,
key `partitions`) beside the streams; it never changes afterwards, and every connection
publishes commands under it (runtime/partition_count). Each
partition has its own durable pull consumer on the commands stream (`dagnats_engine_p<n>`,
filter `dagnats.cmd.<n>.>`), created once and never altered, and is owned by one engine
through a lease in the owners bucket (`dagnats_owners`, key `partition.<n>`): JetStream's KV
`create` takes it, a revision-checked `update` keeps it, and the bucket's TTL
(`settings.partition_lease_ttl_ms`) ends the hold of an engine that stopped refreshing. Only
the owner pulls from a partition's consumer.

Engines announce themselves in the same bucket (`engine.<id>`, refreshed like a lease), so
each knows how many are live and takes a fair share (ceil(partitions / engines)): a new
engine finds its share free once the others released their extra partitions (an owner
releases one partition per tick while it holds more than its share, after the commands of it
in hand are settled). A dead engine's leases expire; the others take them within about one
TTL plus one refresh.

Safety: the owner appends a run's decision only while its belief in holding the run's
partition is fresh by `partition_lease_margin_ms` (`OwnedEventLog`), and a new owner waits
that margin after taking a partition before it pulls; every append records `Dagnats-Owner:
<engine>/<partition>/<term>` (the term: the lease's revision at its taking, which grows with
every new owner), and the history append's expected last sequence stays the last guard.
Admission follow-ups for a run of a partition this engine does not own (a gate admitting a
pending run, a limiter releasing a task) are sent to that partition as commands
(`forward_to_owner`) and decided by its owner. An append to a partition this engine neither
owns nor holds commands of (what a restart re-issues) is allowed, with term 0, under the
sequence check alone.

This module reads and writes the cluster and owners buckets and pulls commands; it decides
nothing about runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Generic, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from dagnats.runtime import settings
from dagnats.runtime.kv_keys import kv_keys
from dagnats.runtime.lease import Lease, new_owner_id
from dagnats.runtime.log import JetStreamEventLog
from dagnats.runtime.partition_count import PARTITIONS_KEY, PartitionRecord, decode_count
from dagnats.runtime.protocols import CommandPublisher
from dagnats.runtime.queue import JetStreamMessage, bind_pull_consumer, fetch_batch
from dagnats.runtime.resources import (
    CLUSTER_BUCKET,
    COMMANDS_STREAM,
    OWNERS,
    OWNERS_BUCKET,
    command_partition_filter,
    ensure_bucket,
    partition_of,
)
from kernel import codec
from kernel.admission import is_gate_id
from kernel.commands import AnyCommand
from kernel.errors import DagnatsError

OWNER_HEADER: Final = "Dagnats-Owner"
PARTITION_KEY_PREFIX: Final = "partition."
ENGINE_KEY_PREFIX: Final = "engine."
CONSUMER_PREFIX: Final = "dagnats_engine_p"
log = logging.getLogger("dagnats.partitions")
M = TypeVar("M")


class PartitionLostError(DagnatsError):
    """This engine may not append for a partition it held: its lease is lost or stale."""

    def __init__(self, run_id: str, partition: int) -> None:
        self.run_id = run_id
        self.partition = partition
        super().__init__(
            f"run {run_id!r}: partition {partition} is no longer this engine's; the command "
            "goes back to its new owner"
        )


def partition_consumer(partition: int) -> str:
    """The durable consumer of one partition's commands."""
    assert 0 <= partition < settings.partitions_max, partition
    return f"{CONSUMER_PREFIX}{partition}"


async def stored_partitions(js: JetStreamContext, *, create_with: int | None) -> int | None:
    """The stored partition count; with `create_with`, stored first when there is none.

    Returns:
        The count, or None when none is stored and `create_with` is None.
    """
    kv = await js.key_value(CLUSTER_BUCKET)
    for _ in range(2):
        try:
            entry = await kv.get(PARTITIONS_KEY)
        except nats.js.errors.KeyNotFoundError:
            if create_with is None:
                return None
            assert 1 <= create_with <= settings.partitions_max, create_with
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                await kv.create(
                    PARTITIONS_KEY, msgspec.json.encode(PartitionRecord(count=create_with))
                )
            continue
        assert entry.value is not None
        return decode_count(entry.value)
    raise AssertionError("the partitions record was neither read nor created")


async def read_owners(js: JetStreamContext) -> dict[str, str]:
    """Every live key of the owners bucket (`partition.<n>` and `engine.<id>`) and its value."""
    kv = await js.key_value(OWNERS_BUCKET)
    found: dict[str, str] = {}
    keys = await kv_keys(js, OWNERS_BUCKET)
    for key in keys[: settings.partitions_max + settings.engines_live_max]:
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            continue  # deleted, or its lease expired
        if entry.value:
            found[key] = entry.value.decode()
    return found


def owners_by_engine(owners: dict[str, str]) -> dict[str, list[int]]:
    """engine id -> the partitions it owns (live engines without any: an empty list)."""
    table: dict[str, list[int]] = {
        key[len(ENGINE_KEY_PREFIX) :]: [] for key in owners if key.startswith(ENGINE_KEY_PREFIX)
    }
    for key, engine in owners.items():
        if key.startswith(PARTITION_KEY_PREFIX):
            owner = engine.split("/", 1)[0]
            table.setdefault(owner, []).append(int(key[len(PARTITION_KEY_PREFIX) :]))
    return {engine: sorted(parts) for engine, parts in sorted(table.items())}


class _OwnersLease(Lease):
    """A lease in the owners bucket (its short TTL), not the projections' leases bucket."""

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            await ensure_bucket(self.js, OWNERS, replicas=1)
            self._kv = await self.js.key_value(OWNERS_BUCKET)
        return self._kv


class Ownership:
    """The partitions this engine owns, kept in step with the live engines' fair shares."""

    def __init__(self, js: JetStreamContext, partitions: int, *, engine_id: str = "") -> None:
        assert 1 <= partitions <= settings.partitions_max, partitions
        self.js = js
        self.partitions = partitions
        self.engine_id = engine_id or new_owner_id()
        ttl = settings.partition_lease_ttl_ms
        self._leases = {
            p: _OwnersLease(js, f"{PARTITION_KEY_PREFIX}{p}", owner=self.engine_id, ttl_ms=ttl)
            for p in range(partitions)
        }
        self._presence = _OwnersLease(
            js, f"{ENGINE_KEY_PREFIX}{self.engine_id}", owner=self.engine_id, ttl_ms=ttl
        )
        self.terms: dict[int, int] = {}  # owned partition -> revision of its taking
        self.releasing: dict[int, float] = {}  # partition -> monotonic deadline of its release
        self.in_hand: dict[int, int] = {}  # partition -> commands fetched, not yet settled
        self.changed = asyncio.Event()  # set whenever the owned set changes

    # -- what the engine asks -------------------------------------------------------------

    def owned(self) -> list[int]:
        """The partitions this engine may pull from now."""
        return sorted(p for p in self.terms if p not in self.releasing)

    def may_append(self, partition: int) -> bool:
        """Whether this engine's hold on `partition` is fresh by the safety margin."""
        lease = self._leases[partition]
        margin_s = settings.partition_lease_margin_ms / 1000
        return partition in self.terms and time.monotonic() < lease.valid_until - margin_s

    def owner_header(self, run_id: str) -> dict[str, str]:
        """The owner header of an append to `run_id`'s history (raises when it must not be).

        Raises:
            PartitionLostError: this engine holds commands of the run's partition but no
                longer a fresh lease on it.
        """
        if is_gate_id(run_id):  # gates are shared by runs of every partition: OCC alone
            return {OWNER_HEADER: f"{self.engine_id}/-/0"}
        partition = partition_of(run_id, self.partitions)
        if self.may_append(partition):
            return {OWNER_HEADER: f"{self.engine_id}/{partition}/{self.terms[partition]}"}
        if partition in self.terms or self.in_hand.get(partition, 0) > 0:
            raise PartitionLostError(run_id, partition)
        return {OWNER_HEADER: f"{self.engine_id}/{partition}/0"}

    # -- keeping the share ----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh, take and release partitions every refresh interval until `stop`; then
        release every partition held (a clean stop hands them over at once)."""
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except (nats.errors.Error, TimeoutError, OSError) as error:
                    log.debug("partition ownership tick failed: %s", error)
                    self._drop_stale()
                with contextlib.suppress(TimeoutError):
                    interval_s = settings.partition_lease_refresh_ms / 1000
                    await asyncio.wait_for(stop.wait(), timeout=interval_s)
        finally:
            await self.release_all()

    async def tick(self) -> None:
        """One round: announce this engine, refresh held leases, finish a release whose
        commands settled, then move toward the fair share (release one, or take free ones)."""
        if not await self._presence.refresh():
            await self._presence.acquire()
        for partition in sorted(self.terms):
            if not await self._leases[partition].refresh():
                self._lose(partition, "its lease was lost")
        for partition, deadline in sorted(self.releasing.items()):
            if self.in_hand.get(partition, 0) <= 0 or time.monotonic() >= deadline:
                await self._finish_release(partition)
        owners = await read_owners(self.js)
        engines = sum(1 for key in owners if key.startswith(ENGINE_KEY_PREFIX)) or 1
        share = math.ceil(self.partitions / min(engines, settings.engines_live_max))
        held = len(self.terms)
        if held > share and not self.releasing:
            self._start_release(max(self.terms))
            return
        free = [p for p in range(self.partitions)
                if f"{PARTITION_KEY_PREFIX}{p}" not in owners and p not in self.terms]  # fmt: skip
        for partition in free[: max(0, share - held)]:
            lease = self._leases[partition]
            if await lease.acquire():
                assert lease.revision is not None
                self.terms[partition] = lease.revision
                self.changed.set()
                log.info("engine %s owns partition %d (term %d)", self.engine_id, partition,
                         lease.revision)  # fmt: skip

    def _drop_stale(self) -> None:
        for partition in sorted(self.terms):
            if not self._leases[partition].held():
                self._lose(partition, "its lease went stale")

    def _lose(self, partition: int, why: str) -> None:
        log.warning("engine %s lost partition %d: %s", self.engine_id, partition, why)
        self.terms.pop(partition, None)
        self.releasing.pop(partition, None)
        self.changed.set()

    def _start_release(self, partition: int) -> None:
        """Stop pulling `partition`; it is released once its commands in hand settled (or
        after `partition_release_wait_ms`), by a later tick."""
        deadline = time.monotonic() + settings.partition_release_wait_ms / 1000
        self.releasing[partition] = deadline
        self.changed.set()

    async def _finish_release(self, partition: int) -> None:
        self.terms.pop(partition, None)
        self.releasing.pop(partition, None)
        await self._leases[partition].release()
        log.info("engine %s released partition %d (rebalancing)", self.engine_id, partition)

    async def release_all(self) -> None:
        """Give every partition and the presence key up (best effort: else they expire)."""
        self.releasing.clear()
        for partition in sorted(self.terms):
            self.terms.pop(partition, None)
            with contextlib.suppress(Exception):
                await self._leases[partition].release()
        with contextlib.suppress(Exception):
            await self._presence.release()
        self.changed.set()


def forward_to_owner(
    ownership: Ownership, commands: CommandPublisher
) -> Callable[[AnyCommand], Awaitable[bool]]:
    """`AdmissionRuntime.forward` of a partitioned engine: a command for a run of a partition
    this engine does not hold freshly is published to that partition (the `engine` kind,
    under a message id derived from the command, so a repeat is dropped) and True returned;
    a run of its own partitions is decided here (False)."""

    async def forward(command: AnyCommand) -> bool:
        run_id = command.run_id
        if is_gate_id(run_id) or ownership.may_append(partition_of(run_id, ownership.partitions)):
            return False
        payload = codec.encode(command)
        digest = hashlib.blake2b(payload, digest_size=8).hexdigest()
        await commands.publish_command(run_id, payload, f"forward:{run_id}:{digest}")
        log.debug("engine %s sent %s of run %s to its partition's owner",
                  ownership.engine_id, type(command).__name__, run_id)  # fmt: skip
        return True

    return forward


class OwnedEventLog(JetStreamEventLog):
    """The history log of a partitioned engine: each append carries the owner header, and
    an append for a partition this engine lost is refused before it is sent."""

    def __init__(self, js: JetStreamContext, ownership: Ownership) -> None:
        super().__init__(js)
        self.ownership = ownership

    def append_headers(self, run_id: str) -> dict[str, str]:
        return self.ownership.owner_header(run_id)


class OwnedMessage(JetStreamMessage):
    """A command of one partition; settling it counts it out of the partition's hand."""

    __slots__ = ("_ownership", "_partition", "_settled")

    def __init__(self, message: Msg, ownership: Ownership, partition: int) -> None:
        super().__init__(message)
        self._ownership = ownership
        self._partition = partition
        self._settled = False
        hand = ownership.in_hand
        hand[partition] = hand.get(partition, 0) + 1

    def _settle(self) -> None:
        if not self._settled:
            self._settled = True
            self._ownership.in_hand[self._partition] -= 1

    async def ack(self) -> None:
        self._settle()
        await super().ack()

    async def nak(self, delay_ms: int = 0) -> None:
        self._settle()
        await super().nak(delay_ms)

    async def term(self) -> None:
        self._settle()
        await super().term()


class CommandBuffer(Generic[M]):
    """Commands fetched and not yet taken, in the order they came, and a wake-up for a taker
    waiting on an empty buffer: one structure (no queue beside a copy of it that could drift).
    `partition_of` says which partition a command is of (a partition given up takes its own
    out, keeping the others' order). Its size is bounded by the pumps that put into it."""

    def __init__(self, partition_of: Callable[[M], int]) -> None:
        self._partition_of = partition_of
        self._commands: deque[M] = deque()
        self._arrived = asyncio.Event()  # set by a put; cleared by a taker about to wait

    def __len__(self) -> int:
        return len(self._commands)

    def held(self) -> list[M]:
        """The commands buffered, oldest first."""
        return list(self._commands)

    def put(self, command: M) -> None:
        self._commands.append(command)
        self._arrived.set()

    def take(self, count_max: int) -> list[M]:
        """The oldest commands, at most `count_max` (none when empty)."""
        assert count_max >= 1, count_max
        commands = self._commands
        return [commands.popleft() for _ in range(min(count_max, len(commands)))]

    def take_partition(self, partition: int) -> list[M]:
        """Every command of `partition`, oldest first; the others stay in their order."""
        kept: deque[M] = deque()
        gone: list[M] = []
        for command in self._commands:
            (gone if self._partition_of(command) == partition else kept).append(command)
        self._commands = kept
        return gone

    def take_all(self) -> list[M]:
        """Every command, oldest first; the buffer is then empty."""
        commands, self._commands = self._commands, deque()
        return list(commands)

    async def wait(self, timeout_ms: int) -> None:
        """Until a command is buffered, at most timeout_ms (one timer, no task)."""
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            self._arrived.set()

        timer = asyncio.get_running_loop().call_later(timeout_ms / 1000, expire)
        try:
            while not self._commands and not expired:
                self._arrived.clear()
                await self._arrived.wait()
        finally:
            timer.cancel()


class PartitionedCommands:
    """`protocols.CommandQueue`'s fetch side for a partitioned engine: one pump per owned
    partition pulls its consumer into a bounded buffer; `fetch_commands` takes from it.

    What waits in the buffer is shown by `held`, which the engine keeps in progress beside
    the commands in hand (runtime/command_pump `keep_in_progress`: a first progress ack
    within an interval of its coming), so a command that waits there while the engine's
    window is full is not delivered again when its ack wait ends.

    Each pump long-polls for one command while the buffer is not full (counting what the
    pumps' fetches of more may bring, `_reserved`), and fetches more than one only into the
    room left (reserved first); so the buffer holds at most `command_batch_max` plus one per
    pump: every owned partition is polled, however many an engine owns (a long poll that
    reserved room of its own left, with more partitions than room, pumps that never polled
    while the others stayed idle)."""

    def __init__(self, js: JetStreamContext, ownership: Ownership) -> None:
        self.js = js
        self.ownership = ownership
        self._buffer: CommandBuffer[OwnedMessage] = CommandBuffer(_partition_of)
        self._reserved = 0  # room the pumps' fetches of more than one under way may fill
        self._pumps: dict[int, asyncio.Task[None]] = {}
        self._subscriptions: dict[int, JetStreamContext.PullSubscription] = {}

    def held(self) -> list[OwnedMessage]:
        """The commands in the buffer (at most `command_batch_max` plus one per partition),
        oldest first."""
        held = self._buffer.held()
        bound = settings.command_batch_max + self.ownership.partitions
        assert len(held) <= bound, (len(held), bound)
        return held

    async def fetch_commands(self, *, batch: int, timeout_ms: int) -> Sequence[OwnedMessage]:
        """Up to `batch` commands of owned partitions, waiting at most timeout_ms."""
        self._steer()
        if not self._buffer:
            await self._buffer.wait(timeout_ms)
        messages = self._buffer.take(batch)
        if not messages:
            return messages
        owned = set(self.ownership.owned())
        kept = [m for m in messages if m._partition in owned]
        for message in messages:
            if message._partition not in owned:  # lost or released meanwhile: hand it over
                with contextlib.suppress(Exception):
                    await message.nak()
        return kept

    def _steer(self) -> None:
        """Start a pump for each newly owned partition; pumps of lost ones end by themselves."""
        for partition in self.ownership.owned():
            pump = self._pumps.get(partition)
            if pump is None or pump.done():
                self._pumps[partition] = asyncio.create_task(self._pump(partition))

    async def _pump(self, partition: int) -> None:
        """Pull `partition` into the buffer while it is owned: a long poll for one command
        while the buffer is not full, then at once what its pending count says waits, as far
        as the buffer has room (reserved: see the class's docstring)."""
        subscription = await self._subscription(partition)
        batch, timeout_ms = 1, settings.command_fetch_timeout_ms
        while partition in self.ownership.owned():
            room = settings.command_batch_max - len(self._buffer) - self._reserved
            batch = min(batch, room)
            if batch <= 0:
                await asyncio.sleep(settings.partition_buffer_full_wait_ms / 1000)
                batch, timeout_ms = 1, settings.command_fetch_timeout_ms
                continue
            if batch == 1:
                batch = 0  # (a long poll for one reserves nothing: at most one a pump)
            self._reserved += batch
            try:
                fetched = await fetch_batch(
                    subscription, batch=max(1, batch), timeout_ms=timeout_ms
                )
            except (nats.errors.Error, TimeoutError, OSError) as error:
                log.debug("partition %d: fetch failed: %s", partition, error)
                fetched = []
                await asyncio.sleep(settings.command_fetch_timeout_ms / 1000)
            finally:
                self._reserved -= batch
            assert len(fetched) <= max(1, batch), (len(fetched), batch)
            for message in fetched:  # (room was kept for them, or it is a poll's one)
                self._buffer.put(OwnedMessage(message._message, self.ownership, partition))
            waiting = fetched[-1].num_pending if fetched else 0
            if waiting > 0:
                batch, timeout_ms = waiting, settings.fetch_no_wait_answer_ms_max
            else:
                batch, timeout_ms = 1, settings.command_fetch_timeout_ms
        await self._give_back(partition)

    async def _give_back(self, partition: int) -> None:
        """Nak what the buffer holds of `partition` (lost, or being released), so that its
        next owner gets it at once and a release waits no longer for it (else it waited for
        a fetch of this engine, which a full window may hold off)."""
        gone = self._buffer.take_partition(partition)
        for message in gone:
            with contextlib.suppress(Exception):
                await message.nak()
        if gone:
            log.info("partition %d: gave back %d buffered command(s)", partition, len(gone))

    async def _subscription(self, partition: int) -> JetStreamContext.PullSubscription:
        subscription = self._subscriptions.get(partition)
        if subscription is None:
            config = api.ConsumerConfig(
                durable_name=partition_consumer(partition),
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=settings.command_ack_wait_ms / 1000,
                max_deliver=settings.command_deliver_max,
                max_ack_pending=settings.ack_pending_max,
                filter_subject=command_partition_filter(partition),
            )
            subscription = await bind_pull_consumer(self.js, COMMANDS_STREAM, config)
            self._subscriptions[partition] = subscription
        return subscription

    async def close(self) -> None:
        """Stop the pumps, hand back what is buffered, unsubscribe (consumers stay)."""
        for pump in self._pumps.values():
            pump.cancel()
        await asyncio.gather(*self._pumps.values(), return_exceptions=True)
        self._pumps.clear()
        for message in self._buffer.take_all():
            with contextlib.suppress(Exception):
                await message.nak()
        for subscription in self._subscriptions.values():
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        self._subscriptions.clear()


def _partition_of(message: OwnedMessage) -> int:
    return message._partition
