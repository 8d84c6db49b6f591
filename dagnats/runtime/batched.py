"""The engine's batch path: a run's several results of one fetch, appended as ONE message.

A fetched batch of commands is handled run by run (runtime/engine.py `_schedule_batch`), each
run's commands in order. Where a run's group holds several results in a row (`CompleteTask`,
`FailTask`, `TaskStarted`, each delivered for the first time) of a plain run (running, no
admission rules, no flow control: admission has nothing to do with its results), they are
decided here in turn, each against the state the events before it made, and the ones that
decide events are appended as ONE history message (a `DecideAll`, kernel/batch.py) under
the run's expected last sequence: a fan-out's results cost one append round trip per fetch,
not one per result. Everything else takes the engine's per-command path, in order.

The rules stay those of the per-command path: each command is authorized once, by
`Engine._authorized` (runtime/roles, task tokens; a refused one is set aside there), and a
command that falls back is handed to the per-command path decoded; append before effects,
effects before the acks, the expected last sequence on every append (a conflict forgets the
run and decides the batch again); a command refused or deciding nothing inside the batch is
acked (or not) as `Engine._rejected` says, after the append that proves the state it was
decided on was history's; each command is settled on its own. A redelivered command goes the
per-command path, which finds it inside the DecideAll (`kernel.batch.holds`) and issues its
effects again (once per message: runtime/redelivered.py). A broken invariant at the append
parks the run (as the per-command path does); whatever else the batch path cannot decide (a
parked run, conflicts in a row) goes the per-command path.

A batch holds at most `commands_per_decision_max` commands, `events_per_decision_max` events
and `history_message_bytes_max` bytes (fewer commands per append when a bound would break).

Test seam: `$DAGNATS_TEST_KILL_AFTER_BATCH_APPEND` set to "1" SIGKILLs the engine's process
right after its first batched append, before that batch's effects and acks (the crash test).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Coroutine
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Final

import msgspec

from dagnats.observe.hooks import Decision as Seen
from dagnats.runtime.admission import Outcome
from dagnats.runtime.parked import RunParkedError
from dagnats.runtime.protocols import CommandMessage
from dagnats.runtime.roles import Refused
from dagnats.runtime.settings import (
    append_attempts_max,
    history_message_bytes_max,
    parked_retry_delay_ms,
    retry_delay_ms,
)
from kernel import codec
from kernel.batch import Decided, batch_command, decide_in_turn, kept
from kernel.commands import AnyCommand, CompleteTask, FailTask, Rejection, TaskStarted
from kernel.effects import AnyEffect
from kernel.errors import AppendConflictError
from kernel.events import AnyEvent
from kernel.state import RunState

if TYPE_CHECKING:
    from dagnats.runtime.engine import Engine

log = logging.getLogger("dagnats.engine")

KILL_AFTER_APPEND_ENV: Final = "DAGNATS_TEST_KILL_AFTER_BATCH_APPEND"  # a test seam (above)
_KILL_AFTER_APPEND: Final = os.environ.get(KILL_AFTER_APPEND_ENV) == "1"  # (read once)
Entry = tuple[CommandMessage, AnyCommand]
# By id(message): each decision span not ended yet (its context manager, what it gave).
Spans = dict[int, tuple[AbstractContextManager[Seen], Seen]]


def handle_group(engine: Engine, group: list[CommandMessage]) -> Coroutine[Any, Any, None]:
    """Handle one run's commands of a fetch in order: rows of results together, the rest
    one by one (the per-command path, handed each command decoded and authorized once).
    Whatever happens, none stays held in progress. A group of one command is the
    per-command path's own coroutine (`_one`: no frame between it and the run's task)."""
    if len(group) == 1:
        return _one(engine, group[0])
    return _handle_rows(engine, group)


async def _handle_rows(engine: Engine, group: list[CommandMessage]) -> None:
    try:
        pending: list[Entry] = []
        for message in group:
            command = await _authorized(engine, message)
            if not isinstance(command, str) and _batchable(message, command):
                pending.append((message, command))
                continue
            if pending:
                await _flush(engine, pending)
                pending = []
            if isinstance(command, str):  # set aside ("dead"), its run parked, or "retry"
                await _settle_one(engine, message, command, _delay(command))
            else:
                await _one(engine, message, command)
        if pending:
            await _flush(engine, pending)
    finally:
        engine._unsettled.difference_update(group)


async def _authorized(engine: Engine, message: CommandMessage) -> AnyCommand | Outcome:
    """The message's command, decoded and authorized as `Engine.handle` does (once: the
    per-command path is handed it); else what became of it."""
    try:  # (its scheduler and task token: JetStream messages only)
        extra = (getattr(message, "scheduler", None), getattr(message, "task_token", None))
        return await engine._authorized(message.data, message.subject, *extra)
    except Exception as error:  # the transport failed (setting it aside): it comes back
        log.warning("command on %s not handled: %s", message.subject, error)
        return "retry"


async def _one(
    engine: Engine, message: CommandMessage, command: AnyCommand | None = None,
    seen: Seen | None = None,
) -> None:  # fmt: skip
    """The per-command path for one fetched message (its `command`: authorized already;
    `seen`: its decision span, opened already), settled whatever happens (none stays held
    in progress)."""
    try:
        data, deliveries = message.data, message.num_delivered
        if command is not None and seen is not None:
            seen.outcome = outcome = await engine.admission.handle(command, data, deliveries)
            if engine._parked_news:
                await engine._report_parked()
        elif command is not None:
            outcome = await engine._handle_authorized(command, data, deliveries)
        else:  # (its scheduler and task token: JetStream messages only)
            extra = (getattr(message, "scheduler", None), getattr(message, "task_token", None))
            authorized = engine._authorize(data, message.subject, *extra)
            if isinstance(authorized, Refused):
                outcome = await engine._not_decided(data, authorized)
            else:
                outcome = await engine._handle_authorized(authorized, data, deliveries)
    except Exception as error:  # the transport failed: let the command come back
        log.warning("command on %s not handled: %s", message.subject, error)
        engine.forget_subject(message.subject)
        outcome = "retry"
    await _settle_one(engine, message, outcome, _delay(outcome))


def _delay(outcome: Outcome) -> int:
    """How long a nakked command waits before it comes back (for "retry" and "parked")."""
    return retry_delay_ms if outcome == "retry" else parked_retry_delay_ms


def _batchable(message: CommandMessage, command: AnyCommand) -> bool:
    """Whether an authorized command may join a batch: a result, delivered for the first
    time (a redelivery: the per-command path finds what history holds of it)."""
    return message.num_delivered == 1 and isinstance(command, CompleteTask | FailTask | TaskStarted)


def _plain(state: RunState) -> bool:
    """Whether admission has nothing to do with the run's results (no gate, no flow control)."""
    workflow = state.workflow
    return state.status == "running" and workflow is not None and workflow.admission is None


class _Appended(msgspec.Struct, frozen=True):
    """A batch the batch path appended (or parked the run at): its decisions (a prefix of
    the entries), the effects they call for, and whether the run was parked."""

    decisions: list[Decided]
    effects: list[AnyEffect]
    parked: bool = False


async def _flush(engine: Engine, pending: list[Entry]) -> None:
    """Decide and append `pending` in batches; what the batch path cannot take goes the
    per-command path. Each command's decision span (its latency) opens here, before it is
    decided, and ends when it is settled."""
    spans: Spans = {}
    try:  # (every span ends, whatever happens: those not ended at their settle, below)
        for message, command in pending:
            span = engine.observer.decision(command)  # (entered, ended by hand: no ExitStack)
            spans[id(message)] = span, span.__enter__()
        while len(pending) > 1:
            try:
                appended = await _batch(engine, pending)
            except Exception as error:  # the transport failed at or before the append
                log.warning("commands of run %s not handled: %s", pending[0][1].run_id, error)
                engine.forget(pending[0][1].run_id)
                for message, _ in pending:
                    spans[id(message)][1].outcome = "retry"
                    await _settle_one(engine, message, "retry", 1_000)
                return
            if appended is None:
                break
            taken = len(appended.decisions)
            await _after(engine, pending[:taken], appended, spans)
            pending = pending[taken:]
        for message, command in pending:
            await _one(engine, message, command, spans[id(message)][1])
    finally:
        for opened, _ in spans.values():
            opened.__exit__(None, None, None)


def _fit(
    entries: list[Entry], decisions: list[Decided]
) -> tuple[list[Decided], tuple[AnyCommand, ...], tuple[AnyEvent, ...], bytes]:
    """The decisions (a prefix), kept commands, events and payload of one history message
    within `history_message_bytes_max` (halving the commands while it is too big; fewer than
    two kept commands: the per-command path takes them)."""
    commands = [command for _, command in entries]
    kept_commands, events = kept(commands, decisions)
    payload = b""
    while kept_commands:
        payload = codec.encode_decision(batch_command(kept_commands), events)
        if len(kept_commands) < 2 or len(payload) <= history_message_bytes_max:
            break
        decisions = decisions[: max(1, len(decisions) // 2)]  # fewer commands per append
        kept_commands, events = kept(commands, decisions)
    return decisions, kept_commands, events, payload


async def _batch(engine: Engine, entries: list[Entry]) -> _Appended | None:
    """Decide a prefix of `entries` together and append it (None: the per-command path
    takes them all). Raises what the transport raises, before anything is settled."""
    run_id = entries[0][1].run_id
    for _ in range(append_attempts_max):
        try:
            loaded = await engine.load(run_id)
            if not _plain(loaded.state):
                return None
            decided = decide_in_turn(loaded.state, [command for _, command in entries])
            decisions, commands, events, payload = _fit(entries, decided)
        except (RunParkedError, AssertionError):
            return None  # the per-command path parks the run, naming why
        if len(commands) < 2:
            return None  # nothing gained: the per-command path decides them one by one
        try:
            effects, _ = await engine._append(loaded, batch_command(commands), events, payload)
        except AppendConflictError:
            engine._count("conflicts")
            engine.forget(run_id)
            continue
        except AssertionError as error:  # (as the per-command path: park, name why)
            engine._park(run_id, f"evolve broke an invariant: {error}")
            return _Appended(decisions, [], parked=True)
        if _KILL_AFTER_APPEND:
            os.kill(os.getpid(), signal.SIGKILL)  # the crash test's seam (module docstring)
        return _Appended(decisions, effects)
    return None


async def _after(engine: Engine, entries: list[Entry], appended: _Appended, spans: Spans) -> None:
    """An appended batch's effects, then each command's ack (or not)."""
    if appended.parked:
        await engine._report_parked()
        for message, _ in entries:
            spans[id(message)][1].outcome = "parked"
            await _settle_one(engine, message, "parked", parked_retry_delay_ms)
        return
    try:
        await engine.execute(appended.effects)
    except Exception as error:  # appended, but effects failed: resume re-derives them
        run_id = entries[0][1].run_id
        log.warning("run %s: effects failed (%s); the run will be resumed", run_id, error)
        engine.needs_resume.add(run_id)
    engine._count("batched")
    await _settle(engine, entries, appended.decisions, spans)


async def _settle(
    engine: Engine, entries: list[Entry], decisions: list[Decided], spans: Spans
) -> None:
    """Ack (or not) each command of an appended batch, as the per-command path would; each
    on its own (one that fails to settle comes back after the ack wait, the others are done)."""
    for (message, _), decided in zip(entries, decisions, strict=True):
        outcome: Outcome = "applied"
        try:
            if isinstance(decided, Rejection):
                outcome = await engine._rejected(decided, message.data, message.num_delivered)
            elif not decided:
                outcome = "ignored"
        except Exception as error:  # (its dead-letter publish failed): it comes back
            log.warning("command on %s not settled: %s", message.subject, error)
            engine._unsettled.discard(message)
            continue
        if outcome in ("applied", "ignored"):
            engine._count(outcome)  # (`_rejected` counts its own)
        span, seen = spans.pop(id(message))
        seen.outcome = outcome
        delay = retry_delay_ms if outcome == "retry" else parked_retry_delay_ms
        try:
            await _settle_one(engine, message, outcome, delay)
        finally:
            span.__exit__(None, None, None)  # (the command's decision span ends)


async def _settle_one(
    engine: Engine, message: CommandMessage, outcome: Outcome, delay: int
) -> None:
    """Ack the message (nak it with `delay` for "parked" and "retry"); a failure is logged
    (the message comes back after the ack wait), never raised."""
    try:
        if outcome in ("parked", "retry"):
            await message.nak(delay)
        else:
            await message.ack()
    except Exception as error:
        log.warning("command on %s not settled: %s", message.subject, error)
    finally:
        engine._unsettled.discard(message)
