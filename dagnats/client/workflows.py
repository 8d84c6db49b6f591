"""The client side of the workflow store: register, read and list revisions per workflow.

Each workflow name has its own revisions 1, 2, 3 ... (stored in the value, see
`dagnats.runtime.resources.encode_stored_workflow`); registering is a compare-and-set on the
key's last bucket sequence, so two registrations at once get two numbers. Older entries
without a stored number are numbered by their place in the key's history. An entry that is
not a definition raises `StoredWorkflowError` (one line), never a decoder's traceback.
The latest entry is read on every `get` (a start sees a registration at once), but decoded
once per stored value: the definitions of the values seen last are kept (`decoded_kept_max`
of at most `decoded_value_bytes_max` each, keyed by the stored bytes, so a new registration
is decoded again), not decoded twice per start as before.
`Client` delegates here; this module imports `dagnats.runtime` and `kernel`, never the CLI.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import TYPE_CHECKING, Final

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from dagnats.client.errors import WorkflowNotFoundError, WorkflowRevisionNotFoundError
from dagnats.runtime.kv_keys import kv_history, kv_keys
from dagnats.runtime.raw_get import kv_operation, message_get
from dagnats.runtime.resources import (
    WORKFLOWS_BUCKET,
    WORKFLOWS_HISTORY,
    StoredWorkflowError,
    decode_stored_workflow,
    encode_stored_workflow,
)
from kernel import codec
from kernel.errors import DagnatsError
from kernel.workflow import WorkflowDef

if TYPE_CHECKING:
    from dagnats.client.core import Client

register_attempts_max: Final = 8  # compare-and-set retries when registrations race
DELETED: Final = (b"DEL", b"PURGE")  # a KV entry's `KV-Operation` when it was deleted
_KV_KEY: Final = re.compile(r"[-/_=a-zA-Z0-9]+(?:\.[-/_=a-zA-Z0-9]+)*")  # what a KV key may be
decoded_kept_max: Final = 32  # decoded stored values kept (frozen definitions: shared safely)
decoded_value_bytes_max: Final = 256 * 1024  # a larger stored value is decoded at each read
# stored value -> (its definition, its own revision): the latest entries read, decoded once
_decoded: OrderedDict[bytes, tuple[WorkflowDef, int | None]] = OrderedDict()


class Revision:
    """One stored revision of a workflow: its own number and the bucket entry's value."""

    __slots__ = ("kv_revision", "number", "value", "workflow")

    def __init__(
        self, number: int, value: bytes, kv_revision: int | None,
        workflow: WorkflowDef | None = None,
    ) -> None:  # fmt: skip
        self.number = number
        self.value = value
        self.kv_revision = kv_revision
        self.workflow = workflow  # the value decoded (None: not yet, or it is no definition)


async def register(client: Client, workflow: WorkflowDef) -> int:
    """Store `workflow` as the next revision of its name; returns that revision (1, 2, ...).

    Raises:
        DagnatsError: the name changed under us `register_attempts_max` times in a row.
    """
    kv = await client.connection.workflows()
    js = client.connection.js
    definition = codec.encode(workflow)
    for _ in range(register_attempts_max):
        latest = await _latest(kv, workflow.name)
        number = 1 if latest is None else await _next_number(js, workflow.name, latest)
        value = encode_stored_workflow(definition, number)
        try:
            if latest is not None:
                await kv.update(workflow.name, value, last=latest.kv_revision)
            else:
                await kv.create(workflow.name, value)
        except nats.js.errors.KeyWrongLastSequenceError:
            continue  # another registration got there first: number again
        return number
    raise DagnatsError(
        f"workflow {workflow.name!r}: {register_attempts_max} registrations raced with this "
        "one; try again"
    )


async def get(client: Client, name: str, revision: int | None) -> WorkflowDef:
    """The definition at the workflow's own `revision` (the latest when None).

    Raises:
        WorkflowNotFoundError: no workflow of that name.
        WorkflowRevisionNotFoundError: the name exists, that revision does not (or is < 1).
        StoredWorkflowError: the stored entry is not a definition.
    """
    kv = await client.connection.workflows()
    chosen = await _latest(kv, name)  # a direct get: the latest is one read
    if chosen is None:
        raise WorkflowNotFoundError(name, await list_names(client))
    if revision is not None:
        revisions = await _revisions(client.connection.js, name)
        found = [r for r in revisions if r.number == revision]
        if not found:
            raise WorkflowRevisionNotFoundError(name, revision, [r.number for r in revisions])
        chosen = found[0]
    if chosen.workflow is not None:
        return chosen.workflow
    workflow, _ = decode_stored_workflow(name, chosen.value, chosen.kv_revision)
    return workflow


async def revision_numbers(client: Client, name: str) -> list[int]:
    """The workflow's revisions kept in the bucket, oldest first."""
    return [r.number for r in await _revisions(client.connection.js, name)]


async def list_names(client: Client) -> list[str]:
    """The registered workflows' names, sorted (a deleted one's purge marker is skipped)."""
    kv = await client.connection.workflows()
    names = await kv_keys(client.connection.js, WORKFLOWS_BUCKET)
    return [name for name in names if await _latest(kv, name) is not None]


async def _latest(kv: KeyValue, name: str) -> Revision | None:
    """The latest entry of `name` (None when there is none, or it was deleted), numbered by
    its stored revision (0 when it has none: an older entry)."""
    if _KV_KEY.fullmatch(name) is None:  # not a possible key: so not a registered name
        return None
    # Read raw (runtime/raw_get: no nats-py `Msg`, header dict or email parser), from the
    # bucket's leader as `kv.get` would: a registration is seen at once.
    entry = await message_get(kv._js, kv._stream, {"last_by_subj": f"{kv._pre}{name}"})
    if entry is None or kv_operation(entry.hdrs) in DELETED or not entry.data:
        return None  # none, or deleted or purged since
    try:
        workflow, stored = decoded_once(name, entry.data, entry.seq)
    except StoredWorkflowError:  # reported when it is read as a definition
        return Revision(0, entry.data, entry.seq)
    return Revision(stored or 0, entry.data, entry.seq, workflow)


def decoded_once(name: str, value: bytes, kv_revision: int) -> tuple[WorkflowDef, int | None]:
    """`decode_stored_workflow` of a stored value, kept for the next read of the same value
    (at most `decoded_kept_max` values, the least recently read dropped first; not one over
    `decoded_value_bytes_max`).

    Raises:
        StoredWorkflowError: the value is not a stored workflow definition (not kept).
    """
    kept = _decoded.get(value)
    if kept is not None:
        _decoded.move_to_end(value)
        return kept
    kept = decode_stored_workflow(name, value, kv_revision)
    if len(value) > decoded_value_bytes_max:
        return kept
    _decoded[value] = kept
    while len(_decoded) > decoded_kept_max:
        _decoded.popitem(last=False)
    assert len(_decoded) <= decoded_kept_max
    return kept


async def _next_number(js: JetStreamContext, name: str, latest: Revision) -> int:
    """The number after `latest` (for an older entry without one: after its history's)."""
    if latest.number >= 1:
        return latest.number + 1
    revisions = await _revisions(js, name)
    return (revisions[-1].number if revisions else 0) + 1


async def _revisions(js: JetStreamContext, name: str) -> list[Revision]:
    """The kept revisions of `name` since its last deletion, oldest first, numbered."""
    if _KV_KEY.fullmatch(name) is None:  # not a possible key: so not a registered name
        return []
    entries = await kv_history(js, WORKFLOWS_BUCKET, name, WORKFLOWS_HISTORY)
    revisions: list[Revision] = []
    for place, entry in enumerate(entries[-WORKFLOWS_HISTORY:], start=1):
        if not entry.value:  # a delete or purge marker: what came before is gone
            revisions = []
            continue
        try:
            _, stored = decode_stored_workflow(name, entry.value, entry.revision)
        except StoredWorkflowError:  # reported when that revision is read, not before
            stored = None
        number = stored if stored is not None else place
        if revisions and number <= revisions[-1].number:
            number = revisions[-1].number + 1  # numbers only grow
        revisions.append(Revision(number, entry.value, entry.revision))
    return revisions
