"""The simulated processes of one seed: their gates, engines, workers and handler calls (the
client's planned commands are the scheduler's).

A `ProcessGate` is `memory.Gate` for one process incarnation: where the seed's faults strike
(a crash at a named point, a late or lost delivery) and where a dead process is stopped from
touching the world again. Used by `scheduler.py` only.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from dataclasses import dataclass, field
from typing import Final, Protocol

from dagnats.runtime.engine import Engine
from dagnats.sim import settings
from dagnats.sim.faults import InjectedHandlerError, SeedFaults, SimulatedCrash
from dagnats.sim.loop import SimLoop
from dagnats.sim.memory import ProcessClock, VirtualTime
from dagnats.sim.memory_queue import CommandPort, QueueEntry
from dagnats.sim.trace import Trace
from dagnats.worker import Handler, TaskContext, Worker

DRAIN_ROUNDS_MAX: Final = 8  # loop turns for a dead process's leftover tasks to finish


class GateWorld(Protocol):
    """What a gate reads of its simulation: the seed's faults, dice, trace and time."""

    faults: SeedFaults
    rng: random.Random
    trace: Trace
    time: VirtualTime


class ProcessGate:
    """`memory.Gate` of one process incarnation: its crash points and delivery faults."""

    __slots__ = ("alive", "crash_kind", "name", "sim")

    def __init__(self, sim: GateWorld, name: str, crash_kind: str) -> None:
        self.sim = sim
        self.name = name
        self.crash_kind = crash_kind  # "" for a process that never crashes (the client)
        self.alive = True

    def check(self, point: str) -> None:
        if not self.alive:
            raise SimulatedCrash(self.name, "after its death")
        if self.crash_kind and self.sim.faults.hit(self.crash_kind, point):
            self.alive = False
            self.sim.trace.add(self.sim.time.now_ms, self.name, f"FAULT crash {point}")
            raise SimulatedCrash(self.name, point)

    def delay_ms(self, point: str) -> int:
        if not self.sim.faults.hit("late_delivery", point):
            return 0
        delay = self.sim.rng.randint(1, settings.late_delivery_ms_max)
        self.sim.trace.add(self.sim.time.now_ms, self.name, f"FAULT {point} late by {delay} ms")
        return delay

    def lose(self, point: str) -> bool:
        if not self.sim.faults.hit("duplicate_delivery", f"{point}_lost"):
            return False
        self.sim.trace.add(self.sim.time.now_ms, self.name, f"FAULT {point} lost")
        return True

    def publish_lost(self, point: str) -> str:
        if self.crash_kind != "worker_crash" or not self.sim.faults.hit("lost_result"):
            return ""
        how = "lost" if self.sim.rng.random() < 0.5 else "unacked"
        self.sim.trace.add(self.sim.time.now_ms, self.name, f"FAULT {point} {how}")
        return how


@dataclass(eq=False)
class EngineProcess:
    name: str
    engine: Engine | None = None
    gate: ProcessGate | None = None
    restart_at_ms: int | None = None
    incarnation: int = 0


@dataclass(eq=False)
class WorkerProcess:
    name: str
    clock: ProcessClock
    worker: Worker | None = None
    gate: ProcessGate | None = None
    commands: CommandPort | None = None
    restart_at_ms: int | None = None
    incarnation: int = 0
    calls: list[HandlerCall] = field(default_factory=list)


@dataclass(eq=False)
class HandlerCall:
    """One delivery of a task to a worker, from delivery to the end of its handler."""

    process: WorkerProcess
    entry: QueueEntry
    finish_at_ms: int | None  # None: the handler hangs
    inject_error: bool
    entered: asyncio.Future[None]
    release: asyncio.Future[None]
    task: asyncio.Task[None] | None = None
    outcome: str = ""  # what the handler did ("" while it was not called)


CURRENT_CALL: contextvars.ContextVar[HandlerCall | None] = contextvars.ContextVar(
    "dagnats_sim_call", default=None
)


def simulated_handler(handler: Handler) -> Handler:
    """The user's handler as the simulator runs it: called at delivery (or replaced by an
    injected exception), then held until its virtual duration has passed."""

    async def run(context: TaskContext) -> object:
        call = CURRENT_CALL.get()
        assert call is not None, "a simulated handler runs only inside a simulated delivery"
        error: Exception | None = None
        value: object = None
        if call.inject_error:
            error = InjectedHandlerError(
                f"simulated failure of {context.task_type} (attempt {context.attempt})"
            )
        else:
            try:
                value = await handler(context)
            except Exception as caught:
                error = caught
        call.outcome = "returned" if error is None else f"raised {type(error).__name__}"
        if not call.entered.done():
            call.entered.set_result(None)
        await call.release
        if error is not None:
            raise error
        return value

    return run


def enter_call(call: HandlerCall, _task: object) -> None:
    """Done-callback of a call's task: a task that ended early still counts as entered."""
    if not call.entered.done():
        call.entered.set_result(None)


async def drain() -> None:
    """Let a dead process's leftover tasks run to their end (each dies at its next call).

    Stops early on the simulator's loop once nothing else is ready to run: the rounds left
    would each run only this coroutine (the loop fires no timer while it is ready)."""
    loop = asyncio.get_running_loop()
    for _ in range(DRAIN_ROUNDS_MAX):
        await asyncio.sleep(0)
        if isinstance(loop, SimLoop) and loop.idle():
            return
