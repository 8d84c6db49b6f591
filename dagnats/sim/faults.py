"""Faults: what can go wrong, how often (a `FaultPlan`), and the seeded dice that decide.

Each fault kind has a probability in a plan. Per seed, `SeedFaults` draws the probability
each kind actually gets in that run (swarm testing, as in TigerBeetle's VOPR: some seeds have
a kind switched off, others have it at up to twice the plan's value), so different seeds
stress different mixes. Every decision comes from the seed's one `random.Random`, so a seed
replays the same faults at the same points.

Kinds and where they strike (the probability is per opportunity):

- engine_crash: each engine call into the world (a read, before an append, after it and
  before the effects, each effect, before the ack), except in a resume after a start: one
  roll for the whole resume, striking at one of its calls (processes.ProcessGate.resuming);
- worker_crash: each worker call (task started, result, ack) and each handler in flight;
- duplicate_delivery: each ack (lost: the message comes back after its ack wait), each timer
  fire (it fires twice), each client start (sent twice), each projection batch (it carries
  messages already applied);
- late_delivery: each publish and timer fire (it arrives up to `late_delivery_ms_max` late);
- lost_heartbeat: each task delivery (its worker stops heartbeating it);
- racing_engine: each seed (a second engine over the same log and queues);
- clock_jump: each scheduler step (one process clock jumps, either way);
- handler_error: each handler call (it raises instead of running);
- handler_hang: each handler call (it never returns; its worker stops heartbeating it);
- snapshot_lost: each engine step (a cached run is forgotten: it folds history again);
- client_cancel: each run (the client cancels it at a random time);
- projector_crash: each projection batch (the projector dies after the projection's writes,
  before the commit; a new one resumes from the stored checkpoint);
- lost_result: each command a worker publishes (a result, a started or lost report): the
  publish fails, either never stored or stored with its acknowledgement lost; the worker sees
  an error and sends it again under the same message id (the duplicate window drops a second
  copy), keeping its task; a worker that dies meanwhile leaves the task to come back after its
  ack wait and be reported lost.

A lost attempt (the worker dies mid-attempt) is worker_crash at "mid_task" or handler_hang.

This module may draw randomness only from the `random.Random` it is given. Every roll draws
from it, for a kind switched off too: switching off a kind that never struck changes nothing
else in the seed, so a failing fault schedule shrinks kind by kind (tests/test_sim.py).
"""

from __future__ import annotations

import random
from typing import Final

import msgspec

FAULT_KINDS: Final = (
    "engine_crash",
    "worker_crash",
    "duplicate_delivery",
    "late_delivery",
    "lost_heartbeat",
    "racing_engine",
    "clock_jump",
    "handler_error",
    "handler_hang",
    "snapshot_lost",
    "client_cancel",
    "projector_crash",
    "lost_result",
)
SWARM_OFF_FRACTION: Final = 0.25  # seeds in which a kind is switched off
SWARM_SCALE_MAX: Final = 2.0  # a kind gets up to this times its planned probability


class SimulatedCrash(BaseException):
    """A process dies here. A BaseException, so it passes through every `except Exception`
    of the code under test, exactly as a SIGKILL would stop it."""

    def __init__(self, process: str, point: str) -> None:
        self.process = process
        self.point = point
        super().__init__(f"{process} crashed at {point}")


class PublishLostError(ConnectionError):
    """What a worker's publish raises when the simulator loses it (or its acknowledgement)."""


class InjectedHandlerError(Exception):
    """What a handler raises when the simulator injects a handler exception."""


class FaultPlan(msgspec.Struct, frozen=True, kw_only=True):
    """The probability of each fault kind (0 switches it off)."""

    engine_crash: float = 0.01
    worker_crash: float = 0.01
    duplicate_delivery: float = 0.03
    late_delivery: float = 0.03
    lost_heartbeat: float = 0.05
    racing_engine: float = 0.3
    clock_jump: float = 0.005
    handler_error: float = 0.05
    handler_hang: float = 0.01
    snapshot_lost: float = 0.02
    client_cancel: float = 0.05
    projector_crash: float = 0.05
    lost_result: float = 0.02

    def __post_init__(self) -> None:
        for kind in FAULT_KINDS:
            value = getattr(self, kind)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"fault {kind}={value}: a probability must be within 0..1")

    @classmethod
    def none(cls) -> FaultPlan:
        """No faults at all: the happy path, interleavings only."""
        return cls(**dict.fromkeys(FAULT_KINDS, 0.0))

    @classmethod
    def parse(cls, spec: str, base: FaultPlan | None = None) -> FaultPlan:
        """A plan from `kind=p,kind=p` (`none` or `default` first to start from those).

        Raises:
            ValueError: an unknown kind or a value that is not a probability (names both).
        """
        plan = base if base is not None else cls()
        changes: dict[str, float] = {}
        for part in (piece.strip() for piece in spec.split(",")):
            if not part:
                continue
            if part in ("none", "default"):
                plan = cls.none() if part == "none" else cls()
                changes.clear()
                continue
            kind, sep, value = part.partition("=")
            if not sep or kind.strip() not in FAULT_KINDS:
                known = ", ".join(FAULT_KINDS)
                raise ValueError(f"fault {part!r} is not KIND=P (kinds: {known})")
            try:
                changes[kind.strip()] = float(value)
            except ValueError:
                raise ValueError(f"fault {part!r}: {value!r} is not a number") from None
        return msgspec.structs.replace(plan, **changes)

    def spec(self) -> str:
        """The plan as `--faults` text; `parse(plan.spec()) == plan`."""
        default = FaultPlan()
        changed = [
            f"{kind}={getattr(self, kind):g}"
            for kind in FAULT_KINDS
            if getattr(self, kind) != getattr(default, kind)
        ]
        return ",".join(changed) if changed else "default"

    def probabilities(self) -> dict[str, float]:
        return {kind: float(getattr(self, kind)) for kind in FAULT_KINDS}


class SeedFaults:
    """The fault dice of one seed: per-kind probabilities drawn from the plan, and counts."""

    __slots__ = ("_random", "counts", "enabled", "probability", "rng")

    def __init__(self, plan: FaultPlan, rng: random.Random, *, swarm: bool = True) -> None:
        self.rng = rng
        self._random = rng.random  # (bound once: every opportunity of every kind rolls it)
        self.probability: dict[str, float] = {}
        for kind, planned in plan.probabilities().items():
            scale = 1.0
            if swarm:
                off = rng.random() < SWARM_OFF_FRACTION
                scale = 0.0 if off else rng.random() * SWARM_SCALE_MAX
            self.probability[kind] = min(1.0, planned * scale)
        self.enabled = any(p > 0.0 for p in self.probability.values())
        self.counts: dict[str, int] = {}

    def hit(self, kind: str, label: str = "") -> bool:
        """Roll for `kind`; count it (under `kind:label` when labelled) when it strikes."""
        probability = self.probability[kind]
        if self._random() >= probability:  # (rolled even when off: see the module)
            return False
        name = f"{kind}:{label}" if label else kind
        self.counts[name] = self.counts.get(name, 0) + 1
        return True

    def rolls(self, kind: str) -> bool:
        """Roll for `kind` without counting it (the caller counts it where it strikes)."""
        return self._random() < self.probability[kind]

    def count(self, name: str) -> None:
        """Count something the substrate did on its own (a redelivery after an ack wait)."""
        self.counts[name] = self.counts.get(name, 0) + 1
