"""A redelivered command's effects, issued again (the engine's per-command path).

The engine that appended a command's decision may have stopped before executing its effects
(and before the ack); the engine that gets the command again decides nothing (it is in
history) and issues those effects again here. A DecideAll's commands come back together:
the first reads the run's history and issues the whole message's effects, the others of the
same message skip the read (`Engine._redone`, one record per run, at most
`command_batch_max` runs: the runs of one fetch).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dagnats.runtime.settings import command_batch_max
from kernel import codec
from kernel.batch import holds
from kernel.commands import AnyCommand
from kernel.effects import AnyEffect
from kernel.errors import DecodeError
from kernel.events import AnyEvent
from kernel.react import react, resume
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState, is_terminal

if TYPE_CHECKING:
    from dagnats.runtime.engine import Engine, Loaded

log = logging.getLogger("dagnats.engine")


async def effects_again(engine: Engine, loaded: Loaded, command: AnyCommand) -> list[AnyEffect]:
    """The effects a redelivered command's own decision called for, when history holds it:
    the engine that appended it may have stopped before executing them (and before the
    ack), and the engine that gets the command again decides nothing (it is in history).
    The decision is the run's last message: its effects, derived again from the state
    before it, once per message (a DecideAll's other commands skip the read: `_redone`,
    one per run of a fetch); an earlier one: the run's outstanding effects (`resume`). All
    effects are idempotent: issuing them again costs only their round trips."""
    redone = engine._redone.get(command.run_id)
    if redone is not None and redone[0] == loaded.last_seq and holds(redone[1], command):
        return []  # issued again already for another command of the same message
    state, found = INITIAL_STATE, False
    try:
        async for seq, data in engine.history.read(command.run_id):
            decision = codec.decode_decision(data)
            if seq > loaded.last_seq or not holds(decision.command, command):
                state = _evolve_all(state, decision.events)
                continue
            found = True
            if seq == loaded.last_seq:
                effects: list[AnyEffect] = []
                for event in decision.events:
                    state = evolve(state, event)
                    effects.extend(react(state, event))
                log.info("run %s: a redelivered command's effects again", command.run_id)
                engine._redone[command.run_id] = (seq, decision.command)
                while len(engine._redone) > command_batch_max:
                    engine._redone.popitem(last=False)
                return effects
            state = _evolve_all(state, decision.events)
    except (DecodeError, AssertionError):  # (a command this code no longer reads, say)
        engine.needs_resume.add(command.run_id)  # its resume issues what is outstanding
        return []
    if not found or is_terminal(loaded.state):
        return []
    return list(resume(loaded.state))


def _evolve_all(state: RunState, events: tuple[AnyEvent, ...]) -> RunState:
    for event in events:
        state = evolve(state, event)
    return state
