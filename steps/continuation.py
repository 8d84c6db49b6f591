"""Continue-as-new, the step side: a step ends its run and a fresh run carries on.

Used by the `continue_as_new` step and by an agent loop whose `on_limit` is continue_as_new:
`continue_as_new(draft, step_id, input, workflow="")` completes the step with
`{"continued_as": <new run id>}` and records `run.continued_as_new`; the kernel then starts the
new run (kernel.run_links.successor_start). It returns a message instead when the chain is at
its bound (`limits.continue_as_new_chain_max`) or the input is too large, so the caller can fail
the step. `should_continue_as_new(state)` says when a history passed the soft size limit.

Links: the new run's `run.started` carries `continued_from`, `chain_root` and `chain_index`;
the new run's id is derived from the chain root and its index, so starting it again is
idempotent. A child run that continues as new stays its parent's child. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re

import msgspec

from kernel import limits
from kernel.events import RunContinuedAsNew
from kernel.payloads import compose_object, encode
from kernel.run_links import root_of
from kernel.state import RunState
from steps.base import Draft

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_DIGEST_CHARS = 16


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


def continue_as_new(
    draft: Draft, step_id: str, input: msgspec.Raw, workflow: str = ""
) -> str | None:
    """End the run as continued-as-new from `step_id` (a live step), carrying `input` into a
    fresh run of `workflow` (default: this run's workflow).

    Returns:
        None when the run ended so, else why it cannot (the chain is at its bound, or the input
        is too large): the step is left live for the caller to fail.
    """
    state = draft.state
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
    # The kernel applies the run's end only if completing the step left the run running
    # (an invalid output fails it instead): kernel.outcome's ordering rule.
    draft.complete(step_id, compose_object((("continued_as", encode(new_run_id)),)))
    draft.emit(
        RunContinuedAsNew(
            step_id=step_id,
            continued_as=new_run_id,
            workflow=workflow or state.workflow.name,
            input=input,
            at_ms=draft.at_ms,
        )
    )
    return None
