"""Partition ownership in the simulator: leases over virtual time, owner headers on every
append, and two faults of a clustered deployment (docs/deployment.md, runtime/partitions.py).

What the cluster does with partitions, modelled in memory: each run's partition
(`partition_of(run_id, partitions)`) is held under a lease with a term that grows with every
new holder; an engine appends a run's decision only while it believes it holds the run's
partition, and each append is recorded with its owner (engine, partition, term), as the
`Dagnats-Owner` header does on NATS. An engine that appends for a partition it does not hold
takes it when its lease is free or expired, else refuses (`PartitionLostError`: the command
goes back, as it would to its owner's consumer). A lease ends `lease_ttl_ms` after its
holder's last append (a dead or idle engine lets it expire).

The two faults (`OwnershipPlan`, per append of a run held by the appending engine):

- ownership_moves: the partition moves to another holder (the other engine of a racing seed,
  else a holder that never appends) just as the engine appends its decision: the engine
  learns it lost the partition mid decision, the append is refused before it is sent and the
  command comes back later;
- pause_past_lease: the engine was paused past its lease: the partition moved to another
  holder (term + 1), but the engine still believes it holds it and appends with its old term
  until its next look at the lease (`stale_window_ms`). For that window two engines believe
  they own the partition; only the history append's expected last sequence stands between
  them, and the seed's invariants (no step result twice, no completed step re-run, every run
  ends) must still hold.

Use: `OwnershipWorld(seed, plan).case(case)` gives the case whose engines append through the
world (`engine_factory`); `run_owned_seed` runs one seed and returns its result with the
world's record. The scheduler, queues and fault dice of `dagnats.sim` are reused unchanged;
this module draws its own dice from its own `random.Random(seed)`, so a seed replays exactly.
Nothing here does I/O.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Final

import msgspec

from dagnats.runtime.engine import Engine
from dagnats.runtime.partitions import PartitionLostError
from dagnats.runtime.protocols import DeadLetters, EventLog, TaskPublisher, Timers
from dagnats.runtime.resources import partition_of
from dagnats.runtime.settings import partitions_default
from dagnats.sim.case import SeedResult, SimCase
from dagnats.sim.memory import LogPort, VirtualTime
from dagnats.sim.runner import run_seed
from kernel.admission import is_gate_id
from kernel.errors import AppendConflictError

OWNERSHIP_FAULT_KINDS: Final = ("ownership_moves", "pause_past_lease")
lease_ttl_ms: Final = 3_000  # a lease ends this long after its holder's last append
stale_window_ms: Final = 3_000  # how long a paused engine keeps believing in a moved lease
ABSENT_HOLDER: Final = "elsewhere"  # the holder of a moved partition in a one-engine seed
SWARM_OFF_FRACTION: Final = 0.25
SEED_SALT: Final = 0x0D1CE  # the world's dice differ from the scheduler's, from the same seed


class OwnershipPlan(msgspec.Struct, frozen=True, kw_only=True):
    """The probability of each ownership fault, per append of a held partition."""

    ownership_moves: float = 0.02
    pause_past_lease: float = 0.02
    partitions: int = partitions_default

    def __post_init__(self) -> None:
        for kind in OWNERSHIP_FAULT_KINDS:
            value = getattr(self, kind)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault {kind}={value}: a probability must be within 0..1")
        if not 1 <= self.partitions <= 1_024:
            raise ValueError(f"partitions={self.partitions}: must be within 1..1024")


@dataclass(frozen=True)
class Holder:
    engine: str
    term: int
    expires_ms: int


@dataclass(frozen=True)
class OwnedAppend:
    """One append as its owner header records it."""

    seq: int
    run_id: str
    engine: str
    partition: int
    term: int
    stale: bool  # the lease had moved on: appended in a pause past the lease


@dataclass
class OwnershipRecord:
    """What the world saw in one seed: appends with their owners, refusals, fault counts."""

    appends: list[OwnedAppend] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


class OwnershipWorld:
    """The leases of one seed and the engines' beliefs in them (see the module)."""

    def __init__(self, seed: int, plan: OwnershipPlan, *, swarm: bool = True) -> None:
        self.plan = plan
        self.rng = random.Random(seed ^ SEED_SALT)
        self.probability: dict[str, float] = {}
        for kind in OWNERSHIP_FAULT_KINDS:
            off = swarm and self.rng.random() < SWARM_OFF_FRACTION
            scale = 0.0 if off else (2.0 * self.rng.random() if swarm else 1.0)
            self.probability[kind] = min(1.0, getattr(plan, kind) * scale)
        self.leases: dict[int, Holder] = {}
        # engine -> partition -> (term it believes it holds, believed until or None: fresh)
        self.beliefs: dict[str, dict[int, tuple[int, int | None]]] = {}
        self.engines: list[str] = []  # engine incarnations, in order of start
        self.time: VirtualTime | None = None
        self.record = OwnershipRecord()

    def case(self, case: SimCase) -> SimCase:
        """`case` with engines that append through this world."""
        return replace(case, engine_factory=self.engine_factory)

    def engine_factory(
        self, history: EventLog, tasks: TaskPublisher, timers: Timers, dead: DeadLetters
    ) -> Engine:
        assert isinstance(history, LogPort), "the ownership world wraps the simulator's log"
        name = getattr(history.gate, "name", "engine")
        self.time = history.log.time
        self.engines.append(name)
        self.beliefs[name] = {}
        return OwnedSimEngine(OwnedLogPort(self, name, history), tasks, timers, dead)

    # -- the rules of one append ----------------------------------------------------------

    def _now(self) -> int:
        assert self.time is not None
        return self.time.now_ms

    def _hit(self, kind: str) -> bool:
        if self.rng.random() >= self.probability[kind]:
            return False
        self.record.count(kind)
        return True

    def _other(self, engine: str) -> str:
        process = engine.split(".", 1)[0]
        others = [e for e in self.engines if e.split(".", 1)[0] != process]
        return others[-1] if others else ABSENT_HOLDER

    def _move(self, partition: int, engine: str) -> Holder:
        holder = self.leases[partition]
        moved = Holder(self._other(engine), holder.term + 1, self._now() + lease_ttl_ms)
        self.leases[partition] = moved
        return moved

    def owner_for_append(self, engine: str, run_id: str, *, resuming: bool) -> OwnedAppend:
        """The owner header of `engine`'s append to `run_id` now (seq still 0).

        Raises:
            PartitionLostError: the engine may not append for the run's partition.
        """
        partition = partition_of(run_id, self.plan.partitions)
        now = self._now()
        beliefs = self.beliefs[engine]
        believed = beliefs.get(partition)
        if believed is not None and believed[1] is not None and now >= believed[1]:
            del beliefs[partition]  # its look at the lease after the pause: it knows now
            self.record.count("stale_belief_ended")
            believed = None
        holder = self.leases.get(partition)
        if (
            believed is not None
            and believed[1] is None
            and holder is not None
            and (holder.engine != engine or holder.term != believed[0])
        ):  # taken after it expired (this engine idled): its refresh noticed the loss
            del beliefs[partition]
            self.record.count("lease_expired_taken")
            believed = None
        if believed is None:
            if holder is not None and holder.engine != engine and now < holder.expires_ms:
                if resuming:  # a restart re-issues effects of every run: term 0, OCC alone
                    return OwnedAppend(0, run_id, engine, partition, 0, stale=False)
                self.record.count("refused_not_owner")
                raise PartitionLostError(run_id, partition)
            term = holder.term if holder is not None and holder.engine == engine else (
                (holder.term if holder is not None else 0) + 1)  # fmt: skip
            self.leases[partition] = Holder(engine, term, now + lease_ttl_ms)
            beliefs[partition] = (term, None)
            believed = beliefs[partition]
        term = believed[0]
        if believed[1] is None and not resuming:
            if self._hit("ownership_moves"):
                self._move(partition, engine)
                del beliefs[partition]
                raise PartitionLostError(run_id, partition)
            if self._hit("pause_past_lease"):
                self._move(partition, engine)
                beliefs[partition] = (term, now + stale_window_ms)
        current = self.leases[partition]
        stale = current.engine != engine or current.term != term
        if not stale:
            self.leases[partition] = Holder(engine, term, now + lease_ttl_ms)
        return OwnedAppend(0, run_id, engine, partition, term, stale=stale)


class OwnedLogPort:
    """`EventLog` of one simulated engine: each append of a run passes the world's rules and
    is recorded with its owner."""

    __slots__ = ("inner", "name", "resuming", "world")

    def __init__(self, world: OwnershipWorld, name: str, inner: LogPort) -> None:
        self.world = world
        self.name = name
        self.inner = inner
        self.resuming = False

    async def append(
        self, run_id: str, payload: bytes, *, msg_id: str, expected_last_seq: int
    ) -> int:
        if is_gate_id(run_id):  # gates are shared by every partition: OCC alone
            return await self.inner.append(
                run_id, payload, msg_id=msg_id, expected_last_seq=expected_last_seq
            )
        owner = self.world.owner_for_append(self.name, run_id, resuming=self.resuming)
        try:
            seq = await self.inner.append(
                run_id, payload, msg_id=msg_id, expected_last_seq=expected_last_seq
            )
        except AppendConflictError:
            self.world.record.count("stale_refused" if owner.stale else "conflicts")
            raise
        self.world.record.count("stale_appended" if owner.stale else "appended")
        self.world.record.appends.append(replace(owner, seq=seq))
        return seq

    def read(self, run_id: str, *, after_seq: int = 0) -> AsyncIterator[tuple[int, bytes]]:
        return self.inner.read(run_id, after_seq=after_seq)

    async def last_seq(self, run_id: str) -> int:
        return await self.inner.last_seq(run_id)

    async def last(self, run_id: str) -> tuple[int, bytes] | None:
        return await self.inner.last(run_id)

    def tail(self, after_seq: int) -> AsyncIterator[tuple[int, str, bytes]]:
        return self.inner.tail(after_seq)

    async def list_runs(self, limit: int) -> list[str]:
        return await self.inner.list_runs(limit)


class OwnedSimEngine(Engine):
    """The runtime engine, unchanged but for marking its restarts: a restart re-issues the
    effects of every run, whichever partition it is in (term 0, the sequence check alone)."""

    async def resume_all(self) -> int:
        port = self.history
        assert isinstance(port, OwnedLogPort)
        port.resuming = True
        try:
            return await super().resume_all()
        finally:
            port.resuming = False


def owner_violations(record: OwnershipRecord) -> list[str]:
    """The owner headers' rule: per run, an append by the partition's current holder never
    follows one by a later term (terms of fresh appends never go back), and every append of a
    run outside a restart carries a term > 0."""
    problems: list[str] = []
    last_term: dict[str, tuple[int, int]] = {}  # run -> (term, seq) of its last fresh append
    for append in sorted(record.appends, key=lambda a: a.seq):
        if append.stale or append.term == 0:
            continue
        seen = last_term.get(append.run_id)
        if seen is not None and append.term < seen[0]:
            problems.append(
                f"run {append.run_id}: seq {append.seq} by {append.engine} has term "
                f"{append.term} after term {seen[0]} at seq {seen[1]} (partition "
                f"{append.partition}): two holders appended fresh"
            )
        last_term[append.run_id] = (append.term, append.seq)
    return problems


def run_owned_seed(
    case: SimCase, seed: int, plan: OwnershipPlan, *, keep_trace: bool = False
) -> tuple[SeedResult, OwnershipRecord]:
    """One seed of `case` with partition ownership and its faults (see the module)."""
    world = OwnershipWorld(seed, plan, swarm=case.swarm)
    result = run_seed(world.case(case), seed, keep_trace=keep_trace)
    return result, world.record
