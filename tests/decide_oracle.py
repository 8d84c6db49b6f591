"""An oracle for `kernel.decide.decide`: every decision is made three times and compared.

1. as the engine makes it (the advance looks only at the steps the events touched);
2. with a full scan of every step on every advance pass (`_touched` answering None): the
   decider before the touched-steps advance, which needs no fixpoint invariant;
3. on the state after an encode/decode round trip (a snapshot, or a restart that folds).

It also asserts the fixpoint the touched-steps advance relies on: a running run without a
concurrency limit is left with no ready step. `oracle_decide` wraps `decide`; tests and the
sim runs (tests/test_touched_oracle.py) put it where the engine looks `decide` up.
"""

from __future__ import annotations

from collections.abc import Callable
from unittest.mock import patch

import kernel.decide as decide_module
from kernel import codec
from kernel.commands import AnyCommand
from kernel.decide import Decided
from kernel.reducer import evolve
from kernel.state import RunState
from tests.advance_check import ready_positions

Decide = Callable[[RunState, AnyCommand], Decided]


class OracleMismatchError(AssertionError):
    """The touched-steps decider and the full scan (or the decoded state) decided apart."""


def _full_scan(decide: Decide, state: RunState, command: AnyCommand) -> Decided:
    with patch.object(decide_module, "_touched", lambda *_: None):
        return decide(state, command)


def after(state: RunState, decided: Decided) -> RunState:
    """The state after `decided`'s events (the state itself for a rejection)."""
    if isinstance(decided, tuple):
        for event in decided:
            state = evolve(state, event)
    return state


def left_ready(state: RunState) -> list[str]:
    """The ready steps a running run without a concurrency limit holds ([] otherwise)."""
    if state.status != "running" or state.workflow is None:
        return []
    if state.workflow.max_concurrent_steps is not None:
        return []
    return [state.step_ids[position] for position in ready_positions(state)]


def oracle_decide(decide: Decide, checked: list[int] | None = None) -> Decide:
    """`decide`, checked against the full scan and the decoded state at every call."""

    def checking(state: RunState, command: AnyCommand) -> Decided:
        decided = decide(state, command)
        scanned = _full_scan(decide, state, command)
        if decided != scanned:
            raise OracleMismatchError(
                f"{type(command).__name__} on {state.run_id!r}: touched decided {decided!r}; "
                f"a full scan decided {scanned!r}"
            )
        if state.status != "new":
            decoded = codec.decode_state(codec.encode(state))
            again = decide(decoded, command)
            if again != decided:
                raise OracleMismatchError(
                    f"{type(command).__name__} on {state.run_id!r} decided {decided!r}; on its "
                    f"decoded state {again!r}"
                )
        ready = left_ready(after(state, decided))
        if ready:
            raise OracleMismatchError(
                f"{type(command).__name__} on {state.run_id!r} left steps {ready} ready"
            )
        if checked is not None:
            checked.append(1)
        return decided

    return checking
