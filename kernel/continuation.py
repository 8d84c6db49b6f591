"""Continue-as-new: a run ends as `continued_as_new` and a fresh run carries on.

Reusable by any step type: `continue_as_new(context, step_id, input, workflow="")` from a
decide part ends the run with `run.continued_as_new` (after completing the step with
`{"continued_as": <new run id>}`), and `react` then starts the new run (`StartContinuation`)
of the same workflow (or `workflow`, a registered name) with `input`. It returns a message
instead when the chain is at its bound (`limits.continue_as_new_chain_max`), so the caller
can fail the step. `should_continue_as_new(state)` says when a history passed the soft size
limit (`limits.history_events_soft_max`).

Links: the new run's `run.started` carries `continued_from`, `chain_root` (the chain's first
run) and `chain_index`; the old run's `run.continued_as_new` names `continued_as`. A new run's
id is derived from the chain root and its index, so starting it again is idempotent. A child
run that continues as new stays its parent's child: the new run inherits the parent link and
reports under the chain root's id (the id its parent knows). Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re

import msgspec

from kernel import limits
from kernel.effects import AnyEffect, EnqueueTask, StartContinuation
from kernel.events import RunContinuedAsNew
from kernel.payloads import compose_object, encode
from kernel.registry import DecideContext
from kernel.state import RunState
from kernel.step_api import timer_seed

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_DIGEST_CHARS = 16


def root_of(state: RunState) -> str:
    """The id of the first run of the run's chain (the run itself when it is not a
    continuation)."""
    return state.chain_root or state.run_id


def next_run_id(chain_root: str, chain_index: int) -> str:
    """The id of run `chain_index` (>= 1) of the chain rooted at `chain_root`:
    `<root>-cont<index>` when that is subject-safe and short enough, else a digest form."""
    assert chain_index >= 1, f"chain index {chain_index} must be >= 1"
    plain = f"{chain_root}-cont{chain_index}"
    if _UNSAFE.search(chain_root) is None and len(plain) <= limits.run_id_length_max:
        return plain
    digest = hashlib.blake2b(
        f"continue\x00{chain_root}\x00{chain_index}".encode(), digest_size=_DIGEST_CHARS // 2
    ).hexdigest()
    keep = limits.run_id_length_max - _DIGEST_CHARS - 1
    result = f"{_UNSAFE.sub('_', plain)[:keep]}-{digest}"
    assert len(result) <= limits.run_id_length_max
    return result


def should_continue_as_new(state: RunState) -> bool:
    """Whether the run's history passed the soft size limit (a hint, never enforced)."""
    return state.event_count >= limits.history_events_soft_max


def stamp_history(effects: list[AnyEffect], state: RunState) -> list[AnyEffect]:
    """`effects` with each task message telling its worker the run's history size (the
    shell calls this on what it publishes, so workers see `ctx.should_continue_as_new`)."""
    return [
        msgspec.structs.replace(e, history_events=state.event_count)
        if isinstance(e, EnqueueTask)
        else e
        for e in effects
    ]


def continue_as_new(
    context: DecideContext, step_id: str, input: msgspec.Raw, workflow: str = ""
) -> str | None:
    """End the run as continued-as-new from `step_id` (a live step), carrying `input` into a
    fresh run of `workflow` (default: this run's workflow).

    Returns:
        None when the run ended so, else why it cannot (the chain is at its bound, or the input
        is too large): the step is left live for the caller to fail.
    """
    state = context.state
    assert state.workflow is not None and state.status == "running", state.status
    index = state.chain_index + 1
    if index > limits.continue_as_new_chain_max:
        return (
            f"run {state.run_id!r} is run {state.chain_index} of the chain rooted at "
            f"{root_of(state)!r}; continue_as_new_chain_max is {limits.continue_as_new_chain_max}"
        )
    if len(input) > limits.payload_bytes_max:
        return f"carried input is {len(input)} bytes; the limit is {limits.payload_bytes_max}"
    new_run_id = next_run_id(root_of(state), index)
    context.complete(step_id, compose_object((("continued_as", encode(new_run_id)),)))
    if context.state.status != "running":
        return None  # completing ended the run another way (e.g. an invalid output)
    context.emit(
        RunContinuedAsNew(
            step_id=step_id,
            continued_as=new_run_id,
            workflow=workflow or state.workflow.name,
            input=input,
            at_ms=context.at_ms,
        )
    )
    return None


def evolve(state: RunState, event: RunContinuedAsNew) -> RunState:
    """Apply `run.continued_as_new` (terminal)."""
    assert state.status == "running", f"run {state.run_id!r} continued while {state.status}"
    return msgspec.structs.replace(
        state,
        status="continued_as_new",
        continued_as=event.continued_as,
        continued_workflow=event.workflow,
        output=event.input,
        ended_at_ms=event.at_ms,
    )


def start_effect(state: RunState, event: RunContinuedAsNew) -> StartContinuation:
    """The effect starting the new run (from the old run's state after the event)."""
    assert state.workflow is not None
    same = event.workflow == state.workflow.name
    return StartContinuation(
        run_id=state.run_id,
        new_run_id=event.continued_as,
        workflow=event.workflow,
        definition=state.workflow if same else None,
        input=event.input,
        chain_root=root_of(state),
        chain_index=state.chain_index + 1,
        parent_run_id=state.parent_run_id,
        parent_step_id=state.parent_step_id,
        depth=state.depth,
        detached=state.detached,
        at_ms=event.at_ms,
        seed=timer_seed(state.seed, event.continued_as),
    )


def react(state: RunState, event: RunContinuedAsNew) -> tuple[AnyEffect, ...]:
    """After `run.continued_as_new`: start the new run."""
    return (start_effect(state, event),)


def restart(state: RunState) -> tuple[AnyEffect, ...]:
    """For the shell after a restart: the start of the new run of a continued run (the shell
    issues it only when that run has no history yet; it is idempotent anyway)."""
    if state.status != "continued_as_new" or state.continued_as is None:
        return ()
    assert state.workflow is not None
    event = RunContinuedAsNew(
        step_id="",
        continued_as=state.continued_as,
        workflow=state.continued_workflow or state.workflow.name,
        input=state.output,
        at_ms=state.ended_at_ms or state.started_at_ms,
    )
    return (start_effect(state, event),)
