"""Several commands of one run decided together, recorded as one history message.

The engine's batch path (dagnats/runtime/batched.py) decides the commands of one run that a
fetch handed it in turn, each against the state the events before it made, and appends the
ones that decided events as one `DecideAll` (kernel/commands.py) with their events
concatenated. Re-deciding that stored command here gives exactly the stored events: each
sub-command is decided against the state the earlier sub-commands' events made. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kernel.commands import AnyCommand, DecideAll, Rejection, StoredCommand
from kernel.decide import decide
from kernel.events import AnyEvent
from kernel.limits import commands_per_decision_max, events_per_decision_max
from kernel.reducer import evolve
from kernel.state import RunState

Decided = tuple[AnyEvent, ...] | Rejection
DecideOne = Callable[[RunState, AnyCommand], Decided]


def decide_stored(
    state: RunState, command: StoredCommand, decide_one: DecideOne = decide
) -> Decided:
    """What a recorded command decides now (the auditor's and replay's re-decision): one
    command as `decide`; a `DecideAll`, its commands in turn, each against the state the
    events before it made, their events concatenated. A sub-command that is refused now is
    refused here (with its index); one that decides to nothing adds nothing (the auditor
    then names the first event that differs)."""
    if not isinstance(command, DecideAll):
        return decide_one(state, command)
    events: list[AnyEvent] = []
    for index, each in enumerate(command.commands):
        decided = decide_one(state, each)
        if isinstance(decided, Rejection):
            message = (
                f"decide_all command {index + 1} of {len(command.commands)}: {decided.message}"
            )
            return Rejection(run_id=decided.run_id, code=decided.code, message=message)
        for event in decided:
            state = evolve(state, event)
        events.extend(decided)
    return tuple(events)


def decide_in_turn(state: RunState, commands: Sequence[AnyCommand]) -> list[Decided]:
    """Each command's decision against the state the events before it made (a refused one or
    one deciding nothing adds nothing), for a prefix of `commands` within the bounds: at most
    `commands_per_decision_max` commands deciding events, `events_per_decision_max` events."""
    decisions: list[Decided] = []
    deciding = events = 0
    for command in commands:
        if deciding >= commands_per_decision_max:
            break
        decided = decide(state, command)
        if not isinstance(decided, Rejection) and decided:
            if deciding and events + len(decided) > events_per_decision_max:
                break
            deciding, events = deciding + 1, events + len(decided)
            for event in decided:
                state = evolve(state, event)
        decisions.append(decided)
    return decisions


def kept(
    commands: Sequence[AnyCommand], decisions: Sequence[Decided]
) -> tuple[tuple[AnyCommand, ...], tuple[AnyEvent, ...]]:
    """The commands of `decide_in_turn`'s decisions (a prefix of `commands`) that decided
    events, and those events in order: what one history message records."""
    pairs = zip(commands, decisions, strict=False)  # (decisions: a prefix of the commands)
    deciding = [(c, d) for c, d in pairs if not isinstance(d, Rejection) and d]
    return tuple(c for c, _ in deciding), tuple(e for _, d in deciding for e in d)


def commands_of(command: StoredCommand) -> tuple[AnyCommand, ...]:
    """The commands a history message records: one, or a DecideAll's."""
    return command.commands if isinstance(command, DecideAll) else (command,)


def holds(stored: StoredCommand, command: AnyCommand) -> bool:
    """Whether a history message's command is `command` or a DecideAll that holds it (a
    redelivered command decided inside a batch is recognised as decided)."""
    return stored == command or (isinstance(stored, DecideAll) and command in stored.commands)


def batch_command(commands: tuple[AnyCommand, ...]) -> StoredCommand:
    """What one history message records for `commands` (decided in turn, each deciding
    events): the command itself when there is one, else a DecideAll at the last one's time."""
    assert commands, "a batch holds at least one command"
    if len(commands) == 1:
        return commands[0]
    run_ids = {each.run_id for each in commands}
    assert len(run_ids) == 1, f"a batch holds commands of one run, not {sorted(run_ids)}"
    assert len(commands) <= commands_per_decision_max, (
        f"a batch holds at most commands_per_decision_max={commands_per_decision_max} commands,"
        f" not {len(commands)}"
    )
    return DecideAll(run_id=commands[0].run_id, at_ms=commands[-1].at_ms, commands=commands)
