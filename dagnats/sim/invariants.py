"""The oracle: an independent fold of every history, and the invariants checked against it.

The oracle listens to the simulated world (every append to the log, every task message the
queue accepts, every command an engine acks) and keeps, per run, the fold of its history at
every sequence. Checked after every step and at the end:

| invariant | what must hold |
| --- | --- |
| history_folds | every appended decision decodes and folds (`evolve` accepts it) |
| step_completes_once | no step has two `step.completed` events |
| engine_state_is_fold | each engine's cached state of a run equals the fold at its sequence |
| run_not_parked | no engine parks a run (a history that does not fold, a broken rule) |
| acked_command_absorbed | an acked command decides to nothing on the history (it is in it) |
| completed_step_not_dispatched | no task is accepted for a step whose completion is recorded |
| attempt_dispatched_once | no attempt is accepted twice within the task duplicate window |
| snapshots_equal_fold | each snapshot the snapshot projection writes is the fold at its seq |
| projections_equal_rebuild | at the end, the SQLite projection fed in batches (redelivered, |
| | crashed) equals a rebuild from zero; its runs and steps rows equal the folds (projector.py) |
| run_ends_in_bound | every run the client started ends within its bound of virtual time |
| settles_in_steps | the seed settles within its scheduler step bound |
| model_matches | each run does what the reference model (model.py) says, in time (model_check.py) |
| user:NAME | each invariant the user passes in (a callable raising AssertionError) |

`decide` appears here only as the oracle of `acked_command_absorbed` (re-deciding a handled
command yields nothing); the engine core that runs is `dagnats.runtime.engine.Engine`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec

from dagnats.runtime.engine import Engine
from dagnats.sim import settings
from dagnats.sim.memory import HistoryMessage, VirtualTime
from dagnats.sim.memory_queue import QueueEntry
from dagnats.worker import decode_task
from kernel import codec
from kernel.admission import is_gate_id
from kernel.decide import decide
from kernel.errors import DecodeError
from kernel.events import AnyEvent, Decision, StepCompleted, event_tag
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState, is_terminal

INVARIANTS: Final = (
    "history_folds",
    "step_completes_once",
    "engine_state_is_fold",
    "run_not_parked",
    "acked_command_absorbed",
    "completed_step_not_dispatched",
    "attempt_dispatched_once",
    "snapshots_equal_fold",
    "projections_equal_rebuild",
    "run_ends_in_bound",
    "settles_in_steps",
    "model_matches",
)


class Violation(msgspec.Struct, frozen=True, kw_only=True):
    """One broken invariant: which, what was seen, when (virtual ms since the epoch)."""

    invariant: str
    message: str
    at_ms: int
    step: int
    run_id: str = ""


@dataclass(frozen=True, slots=True)
class RunView:
    """What a user invariant sees of one run: its folded state and its events so far."""

    run_id: str
    state: RunState
    events: tuple[AnyEvent, ...]
    final: bool  # True at the end of the seed (the run should have ended by then)
    now_ms: int


UserInvariant = Callable[[RunView], None]


@dataclass(slots=True)
class RunTrack:
    """The oracle's knowledge of one run."""

    run_id: str
    state: RunState = INITIAL_STATE
    states: dict[int, RunState] = field(default_factory=lambda: {0: INITIAL_STATE})
    events: list[AnyEvent] = field(default_factory=list)
    completed: set[str] = field(default_factory=set)
    dispatched_at_ms: dict[tuple[str, int], int] = field(default_factory=dict)
    ended_at_ms: int | None = None
    folds: bool = True


class Oracle:
    """Folds every history as it is appended and records each broken invariant."""

    def __init__(
        self, time: VirtualTime, invariants: Sequence[UserInvariant] = (), *, keep_events: bool
    ) -> None:
        self.time = time
        self.user_invariants = tuple(invariants)
        self.keep_events = keep_events or bool(invariants)
        self.runs: dict[str, RunTrack] = {}
        self.violations: list[Violation] = []
        self.step = 0
        # Per engine incarnation: the cache entries (run id -> the very object) already found
        # equal to the fold. History only grows, so an entry checked once stays right.
        self._checked: dict[str, dict[str, object]] = {}
        # The engines' workflow definitions (and step definitions) found equal to the oracle's,
        # by identity (both objects kept): every state of a run holds the same ones, and
        # comparing them again cost three fourths of comparing a state (`_same_state`).
        self._same_parts: dict[int, tuple[object, object]] = {}
        # Told each decision that folds, decoded once (the reference model's check).
        self.decision_listeners: list[Callable[[HistoryMessage, Decision], None]] = []
        # Each history message that folded, decoded once (the snapshot projector reuses it).
        self.decisions: dict[int, Decision] = {}
        # Decodes and folds done (each history message decoded once, each event folded once:
        # the invariants, the snapshot check and the reference model share them).
        self.decodes = 0
        self.folds = 0
        # Each task message the queue accepted: its (run, step, attempt), decoded once here
        # (the attempt log reads it: model_check.AttemptLog).
        self.task_keys: dict[bytes, tuple[str, str, int]] = {}

    # -- recording ------------------------------------------------------------------------

    def violate(self, invariant: str, message: str, run_id: str = "") -> None:
        if len(self.violations) >= settings.violations_per_seed_max:
            return
        self.violations.append(
            Violation(
                invariant=invariant,
                message=message,
                at_ms=self.time.now_ms,
                step=self.step,
                run_id=run_id,
            )
        )

    def track(self, run_id: str) -> RunTrack:
        track = self.runs.get(run_id)
        if track is None:
            track = self.runs[run_id] = RunTrack(run_id=run_id)
        return track

    def state_at(self, run_id: str, seq: int) -> RunState | None:
        """The fold of the run's history up to its message at `seq` (None: no such message)."""
        track = self.runs.get(run_id)
        return track.states.get(seq) if track is not None else None

    def decision_at(self, seq: int) -> Decision | None:
        """The decoded history message at `seq` (None: not one that folded)."""
        return self.decisions.get(seq)

    def state(self, run_id: str) -> RunState:
        track = self.runs.get(run_id)
        return track.state if track is not None else INITIAL_STATE

    # -- listeners ------------------------------------------------------------------------

    def on_append(self, message: HistoryMessage) -> None:
        """Fold the appended decision; it must decode, fold, and complete no step twice."""
        if is_gate_id(message.run_id):
            return  # an admission gate (its own rules: dagnats/sim/admission.py)
        track = self.track(message.run_id)
        if not track.folds:
            return
        try:
            decision = codec.decode_decision(message.payload)
            self.decodes += 1
            state = track.state
            for event in decision.events:
                if isinstance(event, StepCompleted):
                    if event.step_id in track.completed:
                        self.violate(
                            "step_completes_once",
                            f"step {event.step_id!r} completed again (attempt {event.attempt}) "
                            f"in message {message.seq}",
                            message.run_id,
                        )
                    track.completed.add(event.step_id)
                state = evolve(state, event)
                self.folds += 1
        except (DecodeError, AssertionError) as error:
            track.folds = False
            self.violate(
                "history_folds",
                f"history message {message.seq} does not fold: {error}",
                message.run_id,
            )
            return
        track.state = state
        track.states[message.seq] = state
        self.decisions[message.seq] = decision
        if self.keep_events:
            track.events.extend(decision.events)
        for listener in self.decision_listeners:
            listener(message, decision)
        if track.ended_at_ms is None and is_terminal(state):
            track.ended_at_ms = message.at_ms
        if self.user_invariants:
            self.check_user(track, final=False)

    def on_task_published(self, entry: QueueEntry) -> None:
        """A task message the queue accepted (not deduplicated): a dispatch of an attempt."""
        try:
            task = decode_task(entry.data)
        except DecodeError as error:
            self.violate("completed_step_not_dispatched", f"undecodable task message: {error}")
            return
        if len(self.task_keys) < settings.task_keys_remembered_max:
            self.task_keys[entry.data] = (task.run_id, task.step_id, task.attempt)
        track = self.runs.get(task.run_id)
        if track is None:
            self.violate(
                "completed_step_not_dispatched",
                f"task {task.step_id}#{task.attempt} for a run with no history",
                task.run_id,
            )
            return
        if task.step_id in track.completed:
            self.violate(
                "completed_step_not_dispatched",
                f"step {task.step_id!r} dispatched again (attempt {task.attempt}, message id "
                f"{entry.msg_id!r}) after its completion was recorded",
                task.run_id,
            )
        key = (task.step_id, task.attempt)
        earlier = track.dispatched_at_ms.get(key)
        now = self.time.now_ms
        if earlier is not None and now - earlier < settings.task_duplicate_window_ms:
            self.violate(
                "attempt_dispatched_once",
                f"attempt {task.step_id}#{task.attempt} dispatched again {now - earlier} ms "
                f"after the first (message id {entry.msg_id!r})",
                task.run_id,
            )
        track.dispatched_at_ms[key] = now

    def on_command_acked(self, entry: QueueEntry, holder: object) -> None:
        """An engine acked a command: deciding it on the history must give nothing now."""
        try:
            command = codec.decode_command(entry.data)
        except DecodeError:
            return  # set aside as a dead letter: nothing to absorb
        state = self.state(command.run_id)
        try:
            decided = decide(state, command)
        except AssertionError as error:
            decided = ()
            self.violate(
                "acked_command_absorbed",
                f"{type(command).__name__} acked; re-deciding it broke an invariant: {error}",
                command.run_id,
            )
        if isinstance(decided, tuple) and decided:
            tags = ", ".join(event_tag(type(event)) for event in decided[:4])
            self.violate(
                "acked_command_absorbed",
                f"{_describe(command)} was acked but its decision ({tags}) is not in the history",
                command.run_id,
            )

    # -- checks ---------------------------------------------------------------------------

    def check_engine(self, name: str, engine: Engine) -> None:
        """The engine's cached states equal the folds; it parked nothing."""
        cache: dict[str, object] = getattr(engine, "_cache", None) or {}
        checked = self._checked.get(name)
        if checked is None:
            checked = self._checked[name] = {}
        for run_id, loaded in cache.items():
            if checked.get(run_id) is loaded:
                continue
            checked[run_id] = loaded
            state = getattr(loaded, "state", None)
            last_seq = getattr(loaded, "last_seq", -1)
            track = self.runs.get(run_id)
            expected = track.states.get(last_seq) if track is not None else None
            if expected is None and last_seq == 0:
                expected = INITIAL_STATE
            if not self._same_state(state, expected):
                self.violate(
                    "engine_state_is_fold",
                    f"{name} holds a state of the run at sequence {last_seq} that is not the "
                    "fold of its history there",
                    run_id,
                )
        for run_id, reason in sorted(engine.parked.items()) if engine.parked else ():
            self.violate("run_not_parked", f"{name} parked the run: {reason}", run_id)

    def _same_state(self, state: object, expected: RunState | None) -> bool:
        """`state == expected`; the workflow and step definitions each compared once per pair
        of objects (immutable: equal once, equal for good), then taken as the expected ones."""
        if type(state) is not RunState or expected is None:
            return state == expected
        same = self._same_parts
        shared: dict[str, object] = {}
        for name, mine, theirs in (
            ("workflow", state.workflow, expected.workflow),
            ("step_defs", state.step_defs, expected.step_defs),
        ):
            if mine is theirs:
                continue
            known = same.get(id(mine))
            if known is None or known[0] is not mine or known[1] is not theirs:
                if mine != theirs:
                    return False
                same[id(mine)] = (mine, theirs)
            shared[name] = theirs
        if shared:
            state = msgspec.structs.replace(state, **shared)
        return state == expected

    def check_user(self, track: RunTrack, *, final: bool) -> None:
        view = RunView(
            run_id=track.run_id,
            state=track.state,
            events=tuple(track.events),
            final=final,
            now_ms=self.time.now_ms,
        )
        for invariant in self.user_invariants:
            try:
                invariant(view)
            except AssertionError as error:
                name = getattr(invariant, "__name__", "invariant")
                self.violate(f"user:{name}", str(error) or "assertion failed", track.run_id)

    def check_final(self) -> None:
        if self.user_invariants:
            for run_id in sorted(self.runs):
                self.check_user(self.runs[run_id], final=True)


def _describe(command: object) -> str:
    name = type(command).__name__
    step_id = getattr(command, "step_id", "")
    attempt = getattr(command, "attempt", 0)
    return f"{name}({step_id}#{attempt})" if step_id else name
