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
    """`memory.Gate` of one process incarnation: its crash points and delivery faults.

    Each call into the world rolls the process's crash, except while it resumes after a start
    (`resuming`): a resume makes a few calls per run in the log, so rolling at each would make
    a seed's restarts, each resuming every run again, grow with the square of its runs; the
    resume rolls once instead and, when that strikes, crashes at one of its calls."""

    __slots__ = ("alive", "crash_kind", "name", "sim", "strike_in")

    def __init__(self, sim: GateWorld, name: str, crash_kind: str) -> None:
        self.sim = sim
        self.name = name
        self.crash_kind = crash_kind  # "" for a process that never crashes (the client)
        self.alive = True
        # While resuming: the calls left before the crash the resume's roll decided (negative:
        # none); None when not resuming (each call rolls).
        self.strike_in: int | None = None

    def check(self, point: str) -> None:
        if not self.alive:
            raise SimulatedCrash(self.name, "after its death")
        strike_in = self.strike_in
        if strike_in is not None:
            self.strike_in = strike_in - 1
            if strike_in == 0:
                self.sim.faults.count(f"{self.crash_kind}:{point}")
                self._crash(point)
            return
        if self.crash_kind and self.sim.faults.hit(self.crash_kind, point):
            self._crash(point)

    def resuming(self, runs: int) -> None:
        """A resume begins over a log of `runs` runs: roll its crash once (see the class)."""
        assert runs >= 0
        if not self.crash_kind:
            self.strike_in = -1
            return
        strikes = self.sim.faults.rolls(self.crash_kind)
        # (drawn even when it does not strike: a kind switched off changes nothing else)
        call = self.sim.rng.randrange(max(1, settings.resume_calls_per_run * runs))
        self.strike_in = call if strikes else -1

    def resumed(self) -> None:
        """The resume ended (done or crashed): each call rolls again."""
        self.strike_in = None

    def _crash(self, point: str) -> None:
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


async def resume_all(engine: Engine, gate: ProcessGate, runs: int) -> None:
    """`engine.resume_all()` over a log of `runs` runs, its crash rolled once (`resuming`)."""
    gate.resuming(runs)
    try:
        await engine.resume_all()
    finally:
        gate.resumed()


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
