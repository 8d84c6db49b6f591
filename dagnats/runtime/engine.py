"""The orchestrator: read -> evolve -> decide -> append -> react -> effects -> ack.

The engine is the only writer of history. For each command it loads the run's state (from a
bounded cache, or by folding the run's history subject), decides, appends the command and its
events as one history message under the subject's expected last sequence, executes the effects
the new events call for, and only then lets the command be acked. It talks to the world through
the small protocols of `dagnats.runtime.protocols`, so the same code runs on NATS and in the
simulator.

A command that cannot be decoded, or that names an unknown run, is set aside on a dead-letter
subject with its reason. A failed assertion parks that one run (no append, no ack, a loud log
line); the other runs go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Coroutine
from typing import Any

import msgspec

from dagnats.observe.hooks import EngineObserver
from dagnats.runtime import batched, command_pump, redelivered
from dagnats.runtime.admission import AdmissionRuntime, Decided, Outcome
from dagnats.runtime.assertions import require_assertions
from dagnats.runtime.command_pump import CommandWindow
from dagnats.runtime.effect_runner import enqueue_task, run_effect
from dagnats.runtime.ended_runs import EndedRuns
from dagnats.runtime.fresh_runs import fresh_start
from dagnats.runtime.links import RunLinks
from dagnats.runtime.parked import RunParkedError, undecodable, unfoldable
from dagnats.runtime.projector_folds import SharedFolds
from dagnats.runtime.protocols import (
    CommandMessage,
    CommandQueue,
    DeadLetters,
    EventLog,
    TaskPublisher,
    Timers,
)
from dagnats.runtime.roles import Refused, authorize_command, run_id_of_command_subject
from dagnats.runtime.settings import (
    append_attempts_max,
    effects_in_flight_max,
    resume_concurrency_max,
    run_cache_max,
    runs_listed_max,
    unknown_run_deliveries_max,
)
from dagnats.runtime.task_tokens import TaskTokens
from dagnats.runtime.valid_workflows import ValidWorkflows
from dagnats.worker_slots import HandlerSlots
from kernel import codec, registry
from kernel.admission import is_gate_id
from kernel.commands import AnyCommand, Rejection, StartRun, StoredCommand
from kernel.decide import decide_folded
from kernel.effects import AnyEffect, EnqueueTask, StartContinuation
from kernel.errors import AppendConflictError, DecodeError
from kernel.events import AnyEvent, RunStarted
from kernel.react import react, repeated, resume
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState, is_terminal
from projections.snapshot import SnapshotReader

log = logging.getLogger("dagnats.engine")


Tail = tuple["asyncio.Task[None]", list[CommandMessage]]  # a run's last group, its task


class Loaded(msgspec.Struct, frozen=True):
    """A run's state and the stream sequence of its last history message (0: none)."""

    state: RunState
    last_seq: int


class Engine:
    """Decides commands for runs and executes the effects of what it appended."""

    def __init__(
        self,
        history: EventLog,
        tasks: TaskPublisher,
        timers: Timers,
        dead: DeadLetters,
        *,
        cache_runs_max: int = run_cache_max,
        snapshots: SnapshotReader | None = None,
        links: RunLinks | None = None,
    ) -> None:
        require_assertions("the engine")  # a failed assertion parks a run: -O would remove it
        # Load the step table now, on this thread, before projections start worker threads
        # (the SQLite projection folds on one) that would otherwise race to import it first.
        assert registry.names(), "the step registry is empty"
        assert cache_runs_max >= 1
        self.history = history
        self.snapshots = snapshots  # run snapshots (a cache): load = snapshot + tail
        self.tasks = tasks
        self.task_tokens: TaskTokens | None = getattr(tasks, "tokens", None)  # signer checks
        self.timers = timers
        self.dead = dead
        self.cache_runs_max = cache_runs_max
        self._cache: OrderedDict[str, Loaded] = OrderedDict()
        self.needs_resume: set[str] = set()
        self._redone: OrderedDict[str, tuple[int, StoredCommand]] = OrderedDict()  # (below)
        self._parked_news: list[tuple[str, str]] = []  # parked runs not yet dead-lettered
        self._tails: dict[str, Tail] = {}  # per run subject: its last group (and its task)
        self.parked: dict[str, str] = {}
        self._effect_slots = HandlerSlots(effects_in_flight_max)  # (the worker's slot counter)
        self.counters: dict[str, int] = {}
        self.links = links  # child runs and external events (None: the engine has neither)
        self.observer = EngineObserver()  # traces (from the env) and metrics (serve's)
        # Commands fetched and not yet acked or naked, at most commands_unsettled_max: each
        # gets a progress ack every command_progress_interval_ms (runtime/command_pump).
        self._unsettled = CommandWindow()
        self.admission = AdmissionRuntime(self, self._handle_command)  # (runtime/admission.py)
        self.ended: EndedRuns | None = None  # ended-run markers for workers (set by serve)
        self._valid_workflows = ValidWorkflows()  # (StartRun's workflows: runtime/valid_workflows)
        # What it appends, for the projections of this process (serve's): not folded again.
        self.folds: SharedFolds | None = None

    # -- state ---------------------------------------------------------------------------

    async def load(self, run_id: str, start: bool = False) -> Loaded:
        """The run's state: from the cache, or folded from its history subject; a `start`
        takes an uncached run as new, unread (runtime/fresh_runs: the append checks it)."""
        cached = self._cache.get(run_id)
        if cached is not None:
            self._cache.move_to_end(run_id)
            return cached
        if start:
            return Loaded(state=INITIAL_STATE, last_seq=0)
        loaded = await self.fold_history(run_id)
        self._remember(run_id, loaded)
        return loaded

    async def fold_history(self, run_id: str) -> Loaded:
        """The run's state: its snapshot (when there is a usable one) plus the history after
        it, else the fold of its whole history (bounded memory: one message at a time). A
        snapshot that does not agree with the history is ignored. The run's last message is
        read first (one direct get): it says whether the snapshot is current, and a run whose
        last message holds its RunStarted has no other message (a run starts once, first).

        Raises:
            RunParkedError: a history message does not decode or does not fold.
        """
        last = await self.history.last(run_id)
        if last is None:  # a new run: no snapshot asked for (one is written at a seq >= 1)
            return Loaded(state=INITIAL_STATE, last_seq=0)
        last_seq = last[0]
        snapshot = await self.snapshots.get(run_id) if self.snapshots is not None else None
        if snapshot is not None:
            if snapshot.last_seq == last_seq:
                return Loaded(state=snapshot.state, last_seq=last_seq)
            try:
                if snapshot.last_seq < last_seq:
                    return await self._fold_from(run_id, snapshot.state, snapshot.last_seq)
            except RunParkedError:
                pass  # the snapshot may be what is wrong: fold the whole history
            log.warning("run %s: its snapshot disagrees with history; ignored", run_id)
        with contextlib.suppress(DecodeError):
            events = codec.decode_events(last[1])
            if events and isinstance(events[0], RunStarted):  # the run's one message
                state = self._fold_message(run_id, INITIAL_STATE, last_seq, last[1])
                return Loaded(state=state, last_seq=last_seq)
        return await self._fold_from(run_id, INITIAL_STATE, 0)

    async def _fold_from(self, run_id: str, state: RunState, after_seq: int) -> Loaded:
        last_seq = after_seq
        async for seq, data in self.history.read(run_id, after_seq=after_seq):
            state = self._fold_message(run_id, state, seq, data)
            last_seq = seq
        return Loaded(state=state, last_seq=last_seq)

    @staticmethod
    def _fold_message(run_id: str, state: RunState, seq: int, data: bytes) -> RunState:
        try:  # (the events alone: a load needs no command decoded)
            events = codec.decode_events(data)
        except DecodeError as error:
            raise RunParkedError(run_id, undecodable(seq, error)) from None
        try:
            for event in events:
                state = evolve(state, event)
        except AssertionError as error:
            raise RunParkedError(run_id, unfoldable(seq, error)) from None
        return state

    def _remember(self, run_id: str, loaded: Loaded) -> None:
        self._cache[run_id] = loaded
        self._cache.move_to_end(run_id)
        while len(self._cache) > self.cache_runs_max:
            self._cache.popitem(last=False)

    def cached(self, run_id: str) -> Loaded | None:
        """The run's cached state, if any (no read, no change of the cache's order)."""
        return self._cache.get(run_id)

    def forget(self, run_id: str) -> None:
        """Drop a run from the cache (the next command folds its history again)."""
        self._cache.pop(run_id, None)

    def cached_runs(self) -> int:
        return len(self._cache)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # -- one command ---------------------------------------------------------------------

    async def handle(
        self, data: bytes, deliveries: int = 1, subject: str | None = None,
        scheduler: str | None = None, token: str | None = None,
    ) -> Outcome:  # fmt: skip
        """Decide one encoded command and append what it decides; never raises for bad input.
        With its `subject` (and `scheduler`, the schedule that fired it), a command of a type
        its subject's kind may not carry is set aside (runtime/roles.authorize_command), and
        so is a result without its task's `token` (runtime/task_tokens).

        Returns:
            What happened, so the caller acks (all but "parked" and "retry") or not.
        """
        command = self._authorize(data, subject, scheduler, token)
        if isinstance(command, Refused):
            return await self._not_decided(data, command)
        return await self._handle_authorized(command, data, deliveries)

    async def _authorized(
        self, data: bytes, subject: str | None, scheduler: str | None, token: str | None
    ) -> AnyCommand | Outcome:
        """`handle`'s front half: the command, decoded and authorized; else what became of it
        ("dead": set aside, naming why; "parked": its run is parked)."""
        command = self._authorize(data, subject, scheduler, token)
        if isinstance(command, Refused):
            return await self._not_decided(data, command)
        return command

    def _authorize(
        self, data: bytes, subject: str | None, scheduler: str | None, token: str | None
    ) -> AnyCommand | Refused:
        """The command decoded and authorized, or why it is not decided now (a plain call:
        most commands pass, and only a refused one has I/O to do, `_not_decided`)."""
        try:
            command = codec.decode_command(data)
        except DecodeError as error:
            return Refused("command", str(error), None)
        if subject is not None:
            authorized = authorize_command(subject, command, scheduler)
            if self.task_tokens is not None and not isinstance(authorized, str):
                authorized = self.task_tokens.refusal(authorized, token) or authorized
            if isinstance(authorized, str):
                return Refused("forbidden", authorized, command)
            command = authorized
        if command.run_id in self.parked:
            return Refused("parked", "its run is parked", command)
        return command

    async def _not_decided(self, data: bytes, refused: Refused) -> Outcome:
        """A refused command set aside ("dead"), or "parked" (the command's run is parked)."""
        if refused.kind == "parked":
            return "parked"
        await self._dead_letter(refused.kind, data, refused.reason, refused.command)
        return "dead"

    async def _handle_authorized(
        self, command: AnyCommand, data: bytes, deliveries: int
    ) -> Outcome:
        """`handle`'s back half: decide an authorized command and append what it decides.
        Admission is asked around it (`AdmissionRuntime.handle`) only where it looks before
        or after (a start, a timer, a run with admission rules): else no await between."""
        admission = self.admission
        with self.observer.decision(command) as seen:
            if admission.looks_before(command):
                outcome = await admission.handle(command, data, deliveries)
            else:
                decided = await self._handle_command(command, data, deliveries)
                if admission.after_needed(decided):
                    await admission.after(command, decided)
                outcome = decided.outcome
            seen.outcome = outcome
        if self._parked_news:
            await self._report_parked()
        return outcome

    async def _report_parked(self) -> None:
        """Set a newly parked run aside on the dead-letter stream too, with its reason."""
        while self._parked_news:
            run, reason = self._parked_news.pop()
            await self.dead.publish_dead("parked", run.encode(), f"run {run} parked: {reason}")

    async def _handle_command(self, command: AnyCommand, data: bytes, deliveries: int) -> Decided:
        run_id = command.run_id
        if isinstance(command, StartRun):
            reason = self._valid_workflows.problems(command)
            if reason:
                await self._dead_letter("command", data, reason, command)
                return Decided("dead")
        for attempt in range(append_attempts_max):  # a fresh start: no read (runtime/fresh_runs)
            try:
                loaded = await self.load(run_id, attempt == 0 and fresh_start(command, deliveries))
                decided, states = decide_folded(loaded.state, command)
            except RunParkedError as error:
                return Decided(self._park(run_id, error.reason))
            except AssertionError as error:
                return Decided(self._park(run_id, f"decide broke an invariant: {error}"))
            nothing = isinstance(decided, Rejection) or not decided
            if nothing and await self._moved(loaded, run_id):
                continue  # decided on a stale state: another engine appended since
            if nothing and deliveries > 1:
                try:
                    await self.execute(await redelivered.effects_again(self, loaded, command))
                except Exception:
                    self._redone.pop(run_id, None)  # (not issued: the next one issues them)
                    raise
            if nothing and isinstance(command, StartRun):
                await self.execute(list(repeated(loaded.state, command)))
            if isinstance(decided, Rejection):
                return Decided(await self._rejected(decided, data, deliveries))
            if not decided:
                self._count("ignored")
                return Decided("ignored")
            try:
                effects, after = await self._append(loaded, command, decided, states=states)
            except AppendConflictError:
                self._count("conflicts")
                self.forget(run_id)
                continue
            except AssertionError as error:
                return Decided(self._park(run_id, f"evolve broke an invariant: {error}"))
            try:
                await self.execute(effects)
            except Exception as error:  # appended, but effects failed: resume re-derives them
                log.warning("run %s: effects failed (%s); the run will be resumed", run_id, error)
                self.needs_resume.add(run_id)
            self._count("applied")
            return Decided("applied", loaded.state, after)
        log.warning("run %s: %d append conflicts in a row; will retry", run_id, append_attempts_max)
        return Decided("retry")

    async def _append(
        self, loaded: Loaded, command: StoredCommand, events: tuple[AnyEvent, ...],
        payload: bytes = b"", states: tuple[RunState, ...] = (),
    ) -> tuple[list[AnyEffect], RunState]:  # fmt: skip
        """Append one decision under the expected last sequence; its effects and the state.
        `states`: the state after each event, as deciding folded them (kernel
        `decide_folded`: not folded again); else the events are folded here."""
        payload = payload or codec.encode_decision(command, events)  # (or the batch path's)
        digest = hashlib.blake2b(payload, digest_size=8).hexdigest()
        msg_id = f"{command.run_id}:{loaded.last_seq}:{digest}"
        state = loaded.state
        effects: list[AnyEffect] = []
        if states:
            assert len(states) == len(events), (len(states), len(events))
            for state, event in zip(states, events, strict=True):
                effects.extend(react(state, event))
        else:
            for event in events:
                state = evolve(state, event)
                effects.extend(react(state, event))
        seq = await self.history.append(
            command.run_id, payload, msg_id=msg_id, expected_last_seq=loaded.last_seq
        )
        assert seq > loaded.last_seq, f"append returned {seq} after {loaded.last_seq}"
        self._remember(command.run_id, Loaded(state=state, last_seq=seq))
        if self.folds is not None:
            self.folds.appended(seq, command.run_id, events, state)
        self.observer.appended(loaded.state, state, events)
        if is_terminal(state):
            if self.links is not None:
                self.links.forget_run(command.run_id)
            if self.ended is not None and not is_terminal(loaded.state):
                await self.ended.mark(state, command.at_ms)  # workers skip its tasks
        return effects, state

    async def _moved(self, loaded: Loaded, run_id: str) -> bool:
        """Whether the run's history moved past `loaded` (then forget it). A command that
        decides to nothing is acked and gone, so when engines race (ownership moving) the
        state it was decided on must be checked against the history first (found by
        `dagnats sim`: a cached state missing another engine's append dropped a result)."""
        if await self.history.last_seq(run_id) == loaded.last_seq:
            return False
        self.forget(run_id)
        return True

    async def _rejected(self, rejection: Rejection, data: bytes, deliveries: int) -> Outcome:
        self._count("rejected")
        if rejection.code == "unknown_run" and deliveries < unknown_run_deliveries_max:
            return "retry"  # it may have overtaken its run's StartRun (engines race): retry
        if rejection.code == "unknown_run":
            await self._dead_letter("unknown_run", data, rejection.message, None)
            return "dead"
        log.info("run %s: command rejected: %s", rejection.run_id, rejection.message)
        return "rejected"

    async def _dead_letter(
        self, kind: str, data: bytes, reason: str, command: AnyCommand | None
    ) -> None:
        """Set a command aside on `dagnats.dead.<kind>` and say so in one structured log line
        (run id, command type, reason): a dead-lettered command is never silent."""
        run_id, command_type = "?", "?"
        if command is None:
            with contextlib.suppress(DecodeError):
                command = codec.decode_command(data)
        if command is not None:
            run_id, command_type = command.run_id, str(type(command).__struct_config__.tag)
        log.warning(
            "dead-lettered command: run %s, %s: %s", run_id, command_type, reason,
            extra={"run_id": run_id, "command": command_type, "dead_kind": kind, "reason": reason},
        )  # fmt: skip
        self._count("dead")
        await self.dead.publish_dead(kind, data, reason)

    def _park(self, run_id: str, reason: str) -> Outcome:
        log.error("PARKED run %s: %s (no append, no ack; other runs go on)", run_id, reason)
        if run_id not in self.parked:
            self._parked_news.append((run_id, reason))
        self.parked[run_id] = reason
        self.forget(run_id)
        self._count("parked")
        return "parked"

    # -- effects -------------------------------------------------------------------------

    def execute(self, effects: list[AnyEffect]) -> Awaitable[object]:
        """Run effects concurrently (each is idempotent); raises the first failure (awaited:
        one effect's own coroutine, with no frame between)."""
        if len(effects) == 1:
            return self._execute_one(effects[0])
        return asyncio.gather(*(self._execute_one(effect) for effect in effects))

    async def _execute_one(self, effect: AnyEffect) -> None:
        slots = self._effect_slots
        if not isinstance(effect, EnqueueTask):
            await slots.take()
            try:
                await run_effect(effect, self.tasks, self.timers, self.links)
            finally:
                slots.give()
            return
        flow = self.admission.flow
        if flow.may_hold(effect) and not await flow.may_publish(effect):
            return  # deferred by flow control (runtime/admission_flow.py)
        if not slots.take_now():
            await slots.take()
        try:
            if self.observer.tracing is None:  # (no trace context to make current)
                await enqueue_task(effect, self.tasks)
            else:
                with self.observer.enqueueing(effect):
                    await enqueue_task(effect, self.tasks)
        finally:
            slots.give()

    # -- restart -------------------------------------------------------------------------

    async def resume_run(self, run_id: str) -> bool:
        """Issue again every outstanding effect of one run; False when it has ended."""
        if is_gate_id(run_id):  # an admission gate, not a run (runtime/admission.py)
            await self.admission.resume_gate(run_id, self.admission.now_ms())
            return False
        try:
            loaded = await self.load(run_id)
        except RunParkedError as error:
            self._park(run_id, error.reason)
            return False
        effects = list(resume(loaded.state))
        if is_terminal(loaded.state) or loaded.state.status == "new":
            await self.admission.release_ended(loaded.state, self.admission.now_ms())
            self.forget(run_id)
            await self.execute([e for e in effects if await self._never_started(e)])
            return False
        await self.execute(effects)
        return True

    async def _never_started(self, effect: AnyEffect) -> bool:
        """Whether an ended run's effect is still due: the start of a successor run that has
        no history yet (the engine stopped between the append and the effect)."""
        assert isinstance(effect, StartContinuation), f"an ended run resumes {effect!r}"
        return await self.history.last_seq(effect.new_run_id) == 0

    async def resume_pending(self) -> None:
        """Resume the runs whose effects failed earlier; keep those that fail again."""
        for run_id in list(self.needs_resume)[:resume_concurrency_max]:
            try:
                await self.resume_run(run_id)
            except Exception as error:
                log.warning("run %s: resume failed again (%s)", run_id, error)
                continue
            self.needs_resume.discard(run_id)

    async def resume_all(self) -> int:
        """Issue again the effects of every unfinished run (after a start or restart).

        Returns:
            How many unfinished runs were resumed.
        """
        run_ids = await self.history.list_runs(runs_listed_max)
        slots = asyncio.Semaphore(resume_concurrency_max)
        resumed = 0

        async def one(run_id: str) -> None:
            nonlocal resumed
            async with slots:
                if await self.resume_run(run_id):
                    resumed += 1
                    self._count("resumed")  # (bench.restart watches it)

        await asyncio.gather(*(one(run_id) for run_id in run_ids))
        await self._report_parked()
        log.info("resumed %d unfinished run(s) of %d", resumed, len(run_ids))
        return resumed

    # -- the pump ------------------------------------------------------------------------

    async def handle_batch(self, messages: list[CommandMessage]) -> None:
        """Handle a fetched batch: runs in parallel, each run's commands in order; ack each
        command only after its events are appended and its effects executed."""
        await self._schedule_batch(messages)

    def _schedule_batch(self, messages: list[CommandMessage]) -> asyncio.Future[Any]:
        """Start handling a batch now. Each run's commands wait for that run's commands of
        earlier batches (each run subject's last group task, kept in `_tails` before anything
        awaits), so batches overlap while every run still sees its commands in order. One
        task per run's group (the batch is that task when it holds one run: no gather)."""
        groups: dict[str, list[CommandMessage]] = {}
        for message in messages:
            groups.setdefault(run_id_of_command_subject(message.subject), []).append(message)
        self._unsettled.update(messages)
        jobs: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()
        for subject, group in groups.items():
            tail = self._tails.get(subject)
            job = loop.create_task(self._run_group(subject, group, tail[0] if tail else None))
            self._tails[subject] = (job, group)
            jobs.append(job)
        return jobs[0] if len(jobs) == 1 else asyncio.gather(*jobs)

    async def _run_group(
        self, subject: str, group: list[CommandMessage], previous: asyncio.Task[None] | None
    ) -> None:
        try:
            if previous is not None and not previous.done():
                await asyncio.wait((previous,))  # (whatever became of it: this group goes on)
            await self._handle_group(group)
        finally:  # (a group cancelled before it settled: no progress acks for it forever)
            self._unsettled.difference_update(group)
            tail = self._tails.get(subject)
            if tail is not None and tail[1] is group:  # (the run's last group: this one)
                del self._tails[subject]

    def _handle_group(self, group: list[CommandMessage]) -> Coroutine[Any, Any, None]:
        """Rows of results: one append (runtime/batched); the coroutine itself (no frame of
        its own between the group's task and the path that handles it)."""
        return batched.handle_group(self, group)

    def forget_subject(self, subject: str) -> None:
        self.forget(run_id_of_command_subject(subject))

    async def serve(self, commands: CommandQueue, stop: asyncio.Event) -> None:
        """Handle commands until `stop` is set, resuming every unfinished run meanwhile: at
        most commands_unsettled_max in hand, fetched again as they settle (a standing pull
        hands them over as they come while nothing is in flight: runtime/command_pump).

        Resuming runs beside the commands (not before them): an engine restarted with many
        unfinished runs decides new commands at once. Both only issue idempotent effects; an
        effect resumed from a state a command has just moved past is a stale attempt or timer,
        which `decide` turns into nothing.
        """
        await command_pump.serve(self, commands, stop)
