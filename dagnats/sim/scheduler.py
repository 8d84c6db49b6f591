"""The seeded scheduler: one simulated seed of engines, workers, timers, a client and faults.

Every step, the scheduler lists what could happen now (an engine takes a batch of commands, a
worker is handed a task, a handler finishes, a timer fires, a crashed process restarts, the
client sends a command), picks one with the seed's `random.Random`, and does it; when nothing
can happen now, virtual time jumps to the next moment something can. Faults strike inside
those actions, at the points `faults.py` lists. After every step the oracle's invariants are
checked; the seed ends when every run has ended and the queues are empty, when an invariant
breaks, or at its bounds (steps, virtual time).

What runs is the real code: `dagnats.runtime.engine.Engine` (or a factory the caller passes,
for mutation tests) over the in-memory ports, and each task through `Worker._run_message`, the
worker SDK's own path, with the user's handlers. The whole seed is one coroutine on a private
event loop with no I/O and no timers, so the loop's FIFO order is deterministic: the same seed
gives byte-identical histories and the same trace.

A crash is `SimulatedCrash` (a BaseException) raised from a port; the process's gate dies, so
nothing it still has in flight touches the world again, and a new incarnation starts later
(an engine then runs `resume_all`, as after a real restart).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Final

import msgspec

from dagnats.runtime.protocols import CommandMessage
from dagnats.sim import settings
from dagnats.sim.bounds import LostAttempts
from dagnats.sim.case import SeedResult, SimCase
from dagnats.sim.faults import SeedFaults, SimulatedCrash
from dagnats.sim.invariants import Oracle
from dagnats.sim.memory import (
    NEVER_MS,
    HistoryMessage,
    LogPort,
    MemoryEventLog,
    MemorySnapshots,
    ProcessClock,
    SnapshotPort,
    VirtualTime,
)
from dagnats.sim.memory_queue import (
    CommandPort,
    DeadLetter,
    MemoryMessage,
    MemoryTimers,
    TaskPort,
    TimerPort,
    new_command_queue,
    new_task_queue,
)
from dagnats.sim.model_check import AttemptLog, ModelCheck
from dagnats.sim.processes import (
    CURRENT_CALL,
    EngineProcess,
    HandlerCall,
    ProcessGate,
    WorkerProcess,
    drain,
    enter_call,
    resume_all,
)
from dagnats.sim.projector import DATABASE_REBUILD_EVERY_SEEDS, SeedProjector
from dagnats.sim.shared import CaseShared, case_shared
from dagnats.sim.stores import ProjectionStores
from dagnats.sim.trace import Trace, describe_batch
from kernel import codec
from kernel.commands import CancelRun, StartRun
from kernel.state import is_terminal

Action = Callable[[], Awaitable[None]]
CLIENT_CANCEL_MS_MAX: Final = 60_000  # a client cancel comes this long after the start, at most


@dataclass(eq=False)
class ClientAction:
    """A command the simulated client sends at `at_ms` (stamped by its clock then)."""

    at_ms: int
    run_id: str
    command: StartRun | CancelRun
    msg_id: str
    label: str


class Simulation:
    """One seed of one case. `await run()` once."""

    def __init__(
        self,
        case: SimCase,
        seed: int,
        *,
        bound_ms: int,
        keep_trace: bool = False,
        stores: ProjectionStores | None = None,
        shared: CaseShared | None = None,
    ) -> None:
        """`shared`: what the seeds of one call reuse (shared.py); `stores` without it."""
        self.case = case
        self.shared = shared if shared is not None else case_shared(case, stores)
        self.keep_trace = keep_trace
        self.seed = seed
        self.bound_ms = bound_ms
        self.rng = random.Random(seed)
        self.faults = SeedFaults(case.faults, self.rng, swarm=case.swarm)
        self.time = VirtualTime()
        self.start_ms = self.time.now_ms
        self.trace = Trace()
        self.log = MemoryEventLog(self.time)
        self.commands = new_command_queue(self.time)
        self.tasks = new_task_queue(self.time)
        self.timers = MemoryTimers(self.time, self.commands)
        self.dead: list[DeadLetter] = []
        self.snapshots = MemorySnapshots()
        self.oracle = Oracle(self.time, case.invariants, keep_events=False)
        self.log.listeners.append(self.oracle.on_append)
        self.log.listeners.append(self._traced_append)
        self.projector = SeedProjector(
            log=self.log,
            snapshots=self.snapshots,
            rng=self.rng,
            faults=self.faults,
            trace=self.trace,
            factory=case.projection,
            stores=self.shared.stores,
            states_at=self.oracle.state_at,
            violate=self.oracle.violate,
            decision_at=self.oracle.decision_at,
            rebuild_in_database=seed % DATABASE_REBUILD_EVERY_SEEDS == 0,
        )
        self.log.listeners.append(self.projector.on_append)
        self.tasks.on_publish.append(self.oracle.on_task_published)
        self.commands.on_ack.append(self.oracle.on_command_acked)
        self.attempts = AttemptLog(self.time, self.oracle.task_keys)
        self.model = ModelCheck(
            self.time, self.oracle.violate, self.attempts, [self.tasks, self.commands]
        )
        self.oracle.decision_listeners.append(self.model.on_decision)
        self.lost = LostAttempts(case.workflow)  # each run's bound grows with its lost attempts
        self.oracle.decision_listeners.append(self.lost.on_decision)
        self.client_clock = ProcessClock(self.time)
        client_gate = ProcessGate(self, "client", "")
        self.client = CommandPort(self.commands, self.dead, "client", client_gate)
        engines = settings.engines_max if self.faults.hit("racing_engine") else 1
        self.engines = [EngineProcess(name=f"engine-{i + 1}") for i in range(engines)]
        self.workers = [
            WorkerProcess(name=f"worker-{i + 1}", clock=ProcessClock(self.time))
            for i in range(case.workers)
        ]
        self.handlers = self.shared.handlers
        self.calls: list[HandlerCall] = []
        self.client_actions: list[ClientAction] = []
        self.started_at_ms: dict[str, int] = {}
        self.actor = "sim"
        self.steps = 0

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> SeedResult:
        """Simulate the seed to its end; never raises for what the code under test does."""
        self._plan_client()
        for process in self.engines:
            await self._start_engine(process)
        for worker in self.workers:
            self._start_worker(worker)
        settled = False
        try:
            # Each pass is a step or a jump of time to the next moment something can happen;
            # at most steps_max steps, and at most as many jumps (each jump precedes a step).
            for _ in range(2 * self.case.steps_max + 1):
                self._expire()
                actions = self._enabled()
                if not actions:
                    if self._settled():
                        settled = True
                        break
                    due = self._next_due()
                    if due is None or due > self._horizon() or self._overdue(due):
                        break
                    self.time.advance_to(due)
                    continue
                if self.steps >= self.case.steps_max:
                    break
                self.steps += 1
                self.oracle.step = self.steps
                self._clock_jump()
                await actions[int(self.rng.random() * len(actions))]()
                if self.oracle.violations:
                    break
        finally:
            await self._stop_all()
        return self._result(settled)

    def _horizon(self) -> int:
        bound = self.bound_ms + self.lost.most_ms + settings.run_bound_slack_ms
        return self.start_ms + min(bound, settings.horizon_ms_max)

    def _overdue(self, due: int) -> bool:
        """Whether some run will be past its bound by `due` (stop early: it will not end)."""
        after, extra_ms, state = due - self.bound_ms, self.lost.extra_ms, self.oracle.state
        for run_id, started in self.started_at_ms.items():  # (`LostAttempts.bound_ms` inlined)
            if after > started + extra_ms.get(run_id, 0) and not is_terminal(state(run_id)):
                return True
        return False

    def _enabled(self) -> list[Action]:
        """Everything that could happen now, in a fixed order (the dice pick one)."""
        now = self.time.now_ms
        actions: list[Action] = []
        if self.commands.entries and self.commands.has_ready():
            for process in self.engines:
                if process.engine:
                    actions.append(partial(self._engine_step, process))
        if self.tasks.entries:
            subjects = self.tasks.ready_subjects()
            if subjects and self._a_worker_lives():
                for subject in subjects:
                    actions.append(partial(self._deliver, subject))
        for call in self.calls:
            if call.finish_at_ms is not None and call.finish_at_ms <= now:
                actions.append(partial(self._finish, call))
        if self.timers.armed and self.timers.has_due():
            actions.append(self._fire_timer)
        for process in self.engines:
            if process.restart_at_ms is not None and process.restart_at_ms <= now:
                actions.append(partial(self._start_engine, process))
        for worker in self.workers:
            if worker.restart_at_ms is not None and worker.restart_at_ms <= now:
                actions.append(partial(self._restart_worker, worker))
        for client_action in self.client_actions:
            if client_action.at_ms <= now:
                actions.append(partial(self._client_send, client_action))
        return actions

    def _a_worker_lives(self) -> bool:
        for worker in self.workers:  # noqa: SIM110 (each pass asks: a loop costs a fourth of any())
            if worker.worker is not None:
                return True
        return False

    def _next_due(self) -> int | None:
        """The next moment after now at which something can happen (None: nothing will)."""
        now = self.time.now_ms
        times = [self.commands.next_due_ms(), self.tasks.next_due_ms()]
        if self.timers.armed:
            times.append(self.timers.next_due_ms())
        for call in self.calls:
            times.append(call.finish_at_ms)
        for process in self.engines:
            times.append(process.restart_at_ms)
        for worker in self.workers:
            times.append(worker.restart_at_ms)
        for client_action in self.client_actions:
            times.append(client_action.at_ms)
        due: int | None = None
        for at in times:
            if at is not None and now < at < NEVER_MS and (due is None or at < due):
                due = at
        return due

    def _settled(self) -> bool:
        """Every run ended, nothing queued, no handler running but hung ones."""
        if self.client_actions or self.commands.entries or self.tasks.entries:
            return False
        state = self.oracle.state
        for run_id in self.started_at_ms:
            if not is_terminal(state(run_id)):
                return False
        return all(call.finish_at_ms is None for call in self.calls)

    def _expire(self) -> None:
        if not self.commands.entries and not self.tasks.entries:
            return
        for entry in self.commands.expire():
            self.faults.count("redelivery_after_ack_wait:command")
            self.trace.add(self.time.now_ms, "queue", f"command #{entry.number} redelivered")
        for entry in self.tasks.expire():
            self.faults.count("redelivery_after_ack_wait:task")
            self.trace.add(self.time.now_ms, "queue", f"task #{entry.number} redelivered")

    def _clock_jump(self) -> None:
        if not self.faults.hit("clock_jump"):
            return
        clocks = [self.client_clock] + [worker.clock for worker in self.workers]
        names = ["client"] + [worker.name for worker in self.workers]
        index = self.rng.randrange(len(clocks))
        jump = self.rng.randint(-settings.clock_jump_ms_max, settings.clock_jump_ms_max)
        clocks[index].offset_ms = jump
        self.trace.add(self.time.now_ms, names[index], f"FAULT clock jumps to {jump:+d} ms")

    # -- the client -----------------------------------------------------------------------

    def _plan_client(self) -> None:
        workflow = self.case.workflow
        for index in range(self.case.runs):
            run_id = f"run-{index + 1}"
            at_ms = self.time.now_ms + self.rng.randint(0, 10 * index)
            start = StartRun(
                run_id=run_id,
                at_ms=at_ms,
                seed=self.rng.getrandbits(63),
                workflow=workflow,
                input=msgspec.Raw(self.case.input),
            )
            self.client_actions.append(
                ClientAction(at_ms, run_id, start, f"start:{run_id}", "start")
            )
            if self.faults.hit("duplicate_delivery", "client_start_twice"):
                again = at_ms + self.rng.randint(1, settings.late_delivery_ms_max)
                self.client_actions.append(
                    ClientAction(again, run_id, start, f"start:{run_id}:again", "start again")
                )
            if self.faults.hit("client_cancel"):
                at = at_ms + self.rng.randint(0, CLIENT_CANCEL_MS_MAX)
                cancel = CancelRun(run_id=run_id, at_ms=at, reason="simulated client cancel")
                self.client_actions.append(
                    ClientAction(at, run_id, cancel, f"cancel:{run_id}", "cancel")
                )

    async def _client_send(self, action: ClientAction) -> None:
        self.client_actions.remove(action)
        self.started_at_ms.setdefault(action.run_id, self.time.now_ms)
        stamped = msgspec.structs.replace(action.command, at_ms=self.client_clock.now_ms())
        payload = codec.encode(stamped)  # (stamped now, by the client's clock)
        self.trace.add(self.time.now_ms, "client", f"{action.label} {action.run_id}")
        await self.client.publish_command(action.run_id, payload, action.msg_id)

    # -- engines --------------------------------------------------------------------------

    async def _start_engine(self, process: EngineProcess) -> None:
        process.incarnation += 1
        gate = ProcessGate(self, f"{process.name}.{process.incarnation}", "engine_crash")
        commands = CommandPort(self.commands, self.dead, gate, gate)
        engine = self.case.engine_factory(
            LogPort(self.log, gate),
            TaskPort(self.tasks, gate, gate),
            TimerPort(self.timers, gate),
            commands,
        )
        engine.snapshots = SnapshotPort(self.snapshots, gate)
        self.shared.share_with(engine)
        process.engine, process.gate, process.restart_at_ms = engine, gate, None
        self.actor = gate.name
        self.trace.add(self.time.now_ms, gate.name, "starts (resume_all)")
        try:
            await resume_all(engine, gate, self.log.run_count())
        except SimulatedCrash as crash:
            await self._engine_crashed(process, crash)
            return
        self.oracle.check_engine(gate.name, engine)

    async def _engine_step(self, process: EngineProcess) -> None:
        engine, gate = process.engine, process.gate
        assert engine is not None and gate is not None
        self.actor = gate.name
        cache: dict[str, object] = getattr(engine, "_cache", None) or {}
        if (cache or self.snapshots.stored) and self.faults.hit("snapshot_lost"):
            held = sorted(set(cache) | set(self.snapshots.stored))
            run_id = held[self.rng.randrange(len(held))]
            engine.forget(run_id)
            self.snapshots.delete(run_id)
            text = f"FAULT lost its state and the snapshot of {run_id}"
            self.trace.add(self.time.now_ms, gate.name, text)
        batch = self.rng.randint(1, settings.command_batch_max)
        commands = CommandPort(self.commands, self.dead, gate, gate)
        try:
            messages = await commands.fetch_commands(batch=batch, timeout_ms=1)
            self.trace.add(self.time.now_ms, gate.name, partial(describe_batch, messages))
            batch_messages: list[CommandMessage] = list(messages)
            await engine.handle_batch(batch_messages)
            if engine.needs_resume:
                await engine.resume_pending()
        except SimulatedCrash as crash:
            await self._engine_crashed(process, crash)
            return
        self.oracle.check_engine(gate.name, engine)

    async def _engine_crashed(self, process: EngineProcess, crash: SimulatedCrash) -> None:
        gate = process.gate
        assert gate is not None
        gate.alive = False
        process.engine = None
        delay = self.rng.randint(1, settings.engine_restart_ms_max)
        process.restart_at_ms = self.time.now_ms + delay
        self.trace.add(self.time.now_ms, gate.name, f"dies ({crash.point}); back in {delay} ms")
        await drain()

    # -- workers --------------------------------------------------------------------------

    def _start_worker(self, process: WorkerProcess) -> None:
        process.incarnation += 1
        name = f"{process.name}.{process.incarnation}"
        gate = ProcessGate(self, name, "worker_crash")
        user = self.case.worker
        worker = self.case.worker_type(
            concurrency=user.concurrency,
            worker_id=name,
            heartbeat_interval_ms=settings.worker_heartbeat_interval_ms,
            report_started=user.report_started,
            clock=process.clock,
            seeds=lambda: self.rng.getrandbits(63),
        )
        worker.handlers = dict(self.handlers)
        process.worker, process.gate, process.restart_at_ms = worker, gate, None
        process.commands = CommandPort(self.commands, self.dead, gate, gate)

    async def _restart_worker(self, process: WorkerProcess) -> None:
        self._start_worker(process)
        self.trace.add(self.time.now_ms, process.name, "restarts")

    async def _deliver(self, subject: str) -> None:
        alive = [w for w in self.workers if w.worker is not None]
        process = alive[self.rng.randrange(len(alive))]
        worker, gate, commands = process.worker, process.gate, process.commands
        assert worker is not None and gate is not None and commands is not None
        self.actor = gate.name
        entry = self.tasks.ready(subject)[0]
        first = entry.deliveries == 0
        hang = first and self.faults.hit("handler_hang")
        heartbeat_lost = hang or self.faults.hit("lost_heartbeat")
        deadline = self.time.now_ms + self.tasks.ack_wait_ms if heartbeat_lost else NEVER_MS
        delivery = self.tasks.deliver(entry, gate, deadline)
        finish_at = None if hang else self.time.now_ms + self._handler_ms(first)
        loop = asyncio.get_running_loop()
        call = HandlerCall(
            process=process,
            entry=entry,
            finish_at_ms=finish_at,
            inject_error=first and self.faults.hit("handler_error"),
            entered=loop.create_future(),
            release=loop.create_future(),
        )
        faults = " hangs" if hang else (" heartbeat lost" if heartbeat_lost else "")
        faults += " raises" if call.inject_error else ""
        text = f"takes task #{entry.number} (delivery {delivery}){faults}"
        self.trace.add(self.time.now_ms, gate.name, text)
        self.attempts.record(entry.data, gate.name, f"delivery {delivery}{faults}")
        message = MemoryMessage(self.tasks, entry, gate, gate)
        token = CURRENT_CALL.set(call)
        try:
            call.task = loop.create_task(worker._run_message(message, commands, commands))
        finally:
            CURRENT_CALL.reset(token)
        call.task.add_done_callback(partial(enter_call, call))
        await call.entered
        if call.task.done():
            await self._settle(call)
            return
        process.calls.append(call)
        self.calls.append(call)

    def _handler_ms(self, first: bool) -> int:
        if not first:  # a redelivery: the worker reports the lost attempt at once
            return self.rng.randint(0, settings.delivery_ms_max)
        if self.rng.random() < settings.slow_handler_fraction:
            return self.rng.randint(settings.handler_ms_max, settings.slow_handler_ms_max)
        return self.rng.randint(1, settings.handler_ms_max)

    async def _finish(self, call: HandlerCall) -> None:
        process = call.process
        assert process.gate is not None
        self.actor = process.gate.name
        if self.faults.hit("worker_crash", "mid_task"):
            self.trace.add(self.time.now_ms, process.gate.name, "FAULT crash mid-task")
            await self._worker_crashed(process, "mid_task")
            return
        if not call.release.done():  # (done: its worker cut it at its deadline, see `_settle`)
            call.release.set_result(None)
        await self._settle(call)

    async def _settle(self, call: HandlerCall) -> None:
        """Wait for the call's task to end and account for how it ended."""
        task = call.task
        assert task is not None
        process = call.process
        if call in self.calls:
            self.calls.remove(call)
            process.calls.remove(call)
        name = process.gate.name if process.gate is not None else process.name
        try:
            await task
        except SimulatedCrash as crash:
            self.attempts.record(call.entry.data, name, f"{call.outcome}; died ({crash.point})")
            await self._worker_crashed(process, crash.point)
            return
        except asyncio.CancelledError:
            return
        except Exception as error:  # the worker SDK failed: its message comes back later
            self.trace.add(self.time.now_ms, process.name, f"task failed: {error!r}")
            self.attempts.record(call.entry.data, name, f"{call.outcome}; {error}")
        else:
            # A handler its worker cut at its deadline sent nothing (that deadline's timer is on
            # the loop's clock, which jumps while the simulation awaits a worker's sleep).
            cut = call.release.cancelled()
            sent = bool(call.outcome) and not cut
            text = "cut by its worker at its deadline" if cut else "result sent"
            text = f"{call.outcome}; {text}" if call.outcome else "reported (no handler call)"
            self.attempts.record(call.entry.data, name, text, sent=sent)
        entry = call.entry  # unacked (an ack lost): its heartbeats stop with the call
        if not entry.done and entry.holder is process.gate:
            deadline = self.time.now_ms + self.tasks.ack_wait_ms
            entry.deadline_ms = min(entry.deadline_ms, deadline)

    async def _worker_crashed(self, process: WorkerProcess, point: str) -> None:
        gate = process.gate
        assert gate is not None
        gate.alive = False
        for call in list(process.calls):
            self.attempts.record(call.entry.data, gate.name, "died mid-attempt")
            self.calls.remove(call)
            if call.task is not None and not call.task.done():
                call.task.cancel()
        process.calls.clear()
        self.tasks.release_holder(gate, self.time.now_ms + self.tasks.ack_wait_ms)
        process.worker, process.commands = None, None
        delay = self.rng.randint(1, settings.worker_restart_ms_max)
        process.restart_at_ms = self.time.now_ms + delay
        self.trace.add(self.time.now_ms, gate.name, f"dies ({point}); back in {delay} ms")
        await drain()

    # -- timers ---------------------------------------------------------------------------

    async def _fire_timer(self) -> None:
        timer = self.timers.due()[0]
        self.actor = "timers"
        delay = settings.delivery_ms_max
        if self.faults.hit("late_delivery", "timer"):
            delay += self.rng.randint(1, settings.late_delivery_ms_max)
        self.trace.add(
            self.time.now_ms, "timers", f"fires {timer.run_id} {timer.timer_id} (+{delay} ms)"
        )
        self.timers.fire(timer, delay)
        if self.faults.hit("duplicate_delivery", "timer_twice"):
            again = delay + self.rng.randint(1, settings.late_delivery_ms_max)
            self.timers.fire(timer, again)
            self.trace.add(self.time.now_ms, "timers", f"FAULT fires {timer.timer_id} again")

    # -- the end --------------------------------------------------------------------------

    async def _stop_all(self) -> None:
        for call in self.calls:
            if call.task is not None and not call.task.done():
                call.task.cancel()
        self.calls.clear()
        for worker in self.workers:
            worker.calls.clear()
        await drain()

    def _result(self, settled: bool) -> SeedResult:
        oracle = self.oracle
        if not oracle.violations:
            if not settled and self.steps >= self.case.steps_max:
                oracle.violate(
                    "settles_in_steps",
                    f"the seed did not settle within {self.case.steps_max} scheduler steps",
                )
            ends: dict[str, tuple[str, int | None]] = {
                run_id: (track.state.status, track.ended_at_ms)
                for run_id, track in oracle.runs.items()
            }
            self.lost.check_ends(
                self.bound_ms, self.started_at_ms, ends, self.time.now_ms, oracle.violate
            )
        if not oracle.violations:
            states = {run_id: track.state for run_id, track in oracle.runs.items()}
            self.projector.check_final(self.time.now_ms, states)
        if not oracle.violations:
            self.model.check_final({run_id: track.state for run_id, track in oracle.runs.items()})
        if not oracle.violations:
            oracle.check_final()
        keep = self.keep_trace or bool(oracle.violations)
        digest = hashlib.blake2b(digest_size=16)
        for message in self.log.messages:
            digest.update(message.payload)
        return SeedResult(
            seed=self.seed,
            violations=tuple(oracle.violations),
            faults=dict(sorted(self.faults.counts.items())),
            probabilities=self.faults.probability,
            virtual_ms=self.time.now_ms - self.start_ms,
            steps=self.steps,
            runs={run_id: oracle.state(run_id).status for run_id in sorted(self.started_at_ms)},
            digest=digest.hexdigest(),
            trace=self.trace.lines(self.start_ms) if keep else (),
            projection_batches=self.projector.batches,
            decodes=oracle.decodes,
            folds=oracle.folds,
        )

    def _traced_append(self, message: HistoryMessage) -> None:
        self.trace.add_append(self.time.now_ms, self.actor, message)
