"""Admission: the aggregate that says which runs of a gated workflow may run now.

A workflow with `concurrency.max_runs` or a `singleton` key is gated. Each gate (the
workflow and the value of its key path in a run's input) is an aggregate of its own, with its
own history subject (`gate_id`, prefixed `admission-`), decided the way a run is:
`decide_admission(state, command) -> events`, `evolve_admission(state, event) -> state`, and
appended by the engine under the subject's expected last sequence, so two engines never admit
over the limit (the second append conflicts, reloads and decides again).

The state holds the runs that hold a slot (`holders`), the pending queue (`waiting`, ordered by
priority, highest first, then by arrival) and the last skipped runs. The rules:

- a request is granted while a slot is free and nobody waits before it; else it waits
  (`queue`, the default, and `concurrency.max_runs`), is skipped (`singleton.mode: skip`,
  naming the holder), or evicts the holder (`cancel_previous`: the holder is cancelled);
- a release (a run ended, or a pending run was cancelled) frees its slot or its place, and the
  first waiting runs are granted until the slots are full;
- a request that takes over from the previous run of its continue-as-new chain, while that
  run holds a slot, moves the slot to it (no release, no queue step: nobody overtakes it);
- a request or release for a run the gate already decided decides nothing (idempotent).

Pure: no I/O, no clock (`at_ms` comes in the command).
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal, assert_never

import msgspec

from kernel import limits
from kernel.commands import AdmissionVerdict
from kernel.workflow import WorkflowDef

GATE_PREFIX: Final = "admission-"
GateMode = Literal["queue", "skip", "cancel_previous"]
replace = msgspec.structs.replace


class Gate(msgspec.Struct, frozen=True, kw_only=True):
    """Where a run of a gated workflow asks for a slot, and on what terms."""

    gate_id: str
    workflow: str
    key: str  # the JSON text of the key value ("" for a gate without a key)
    limit: int
    mode: GateMode
    priority: int


# -- commands -----------------------------------------------------------------------------


class AdmissionCommand(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    gate_id: str
    run_id: str
    at_ms: int


class RequestAdmission(AdmissionCommand, frozen=True, kw_only=True, tag="admission.request"):
    limit: int
    mode: GateMode = "queue"
    priority: int = 0
    workflow: str = ""
    key: str = ""
    # The run this one continues as new (its chain's previous run): while that run holds a
    # slot of this gate, the slot moves to this one, with no release and no queue step.
    takes_over_from: str = ""


class ReleaseAdmission(AdmissionCommand, frozen=True, kw_only=True, tag="admission.release"):
    """A run of the gate ended (or was cancelled while pending): its slot or place is free."""


class SnapshotAdmission(AdmissionCommand, frozen=True, kw_only=True, tag="admission.snapshot"):
    """Compaction: record the gate's whole state, so the messages before it may be purged
    (`run_id` is ""). The engine asks it when the gate's history since its last snapshot
    passes a bound (dagnats/runtime/admission_compact.py)."""


AnyAdmissionCommand = RequestAdmission | ReleaseAdmission | SnapshotAdmission


# -- events -------------------------------------------------------------------------------


class AdmissionEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    v: int = 1
    run_id: str
    at_ms: int


class AdmissionOpened(AdmissionEvent, frozen=True, kw_only=True, tag="admission.opened"):
    """The gate's first event, or its terms changed (a newer workflow version)."""

    gate_id: str
    workflow: str
    key: str
    limit: int


class AdmissionGranted(AdmissionEvent, frozen=True, kw_only=True, tag="admission.granted"):
    pass


class AdmissionQueued(AdmissionEvent, frozen=True, kw_only=True, tag="admission.queued"):
    priority: int
    order: int


class AdmissionSkipped(AdmissionEvent, frozen=True, kw_only=True, tag="admission.skipped"):
    holder_run_id: str


class AdmissionEvicted(AdmissionEvent, frozen=True, kw_only=True, tag="admission.evicted"):
    """The holder `run_id` loses its slot to `by_run_id` (singleton cancel_previous)."""

    by_run_id: str


class AdmissionReleased(AdmissionEvent, frozen=True, kw_only=True, tag="admission.released"):
    pass


class AdmissionHandedOver(AdmissionEvent, frozen=True, kw_only=True, tag="admission.handed_over"):
    """The holder `from_run_id` hands its slot to `run_id`, the next run of its chain."""

    from_run_id: str


class AdmissionSnapshotted(AdmissionEvent, frozen=True, kw_only=True, tag="admission.snapshotted"):
    """The gate's state as its events fold it: replay may start here (evolve takes it as it
    is), so `fold(all) == fold(from this event on)`."""

    state: AdmissionState


AnyAdmissionEvent = (
    AdmissionOpened | AdmissionGranted | AdmissionQueued | AdmissionSkipped | AdmissionEvicted
    | AdmissionReleased | AdmissionHandedOver | AdmissionSnapshotted
)  # fmt: skip


class AdmissionDecision(msgspec.Struct, frozen=True, kw_only=True):
    """One history message of a gate: the command and the events decided from it."""

    command: AnyAdmissionCommand
    events: tuple[AnyAdmissionEvent, ...]


# -- state --------------------------------------------------------------------------------


class Waiting(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    priority: int
    order: int


class AdmissionState(msgspec.Struct, frozen=True, kw_only=True):
    gate_id: str = ""
    workflow: str = ""
    key: str = ""
    limit: int = 0
    holders: tuple[str, ...] = ()
    waiting: tuple[Waiting, ...] = ()  # highest priority first, then by arrival
    next_order: int = 0
    skipped: tuple[tuple[str, str], ...] = ()  # (run, holder), the last admission_skips_kept


INITIAL_ADMISSION: Final = AdmissionState()


def gate_id_of(workflow: str, key: str) -> str:
    """The gate's id: a safe subject token, the same for the same workflow and key."""
    digest = hashlib.blake2b(f"{workflow}\0{key}".encode(), digest_size=12).hexdigest()
    return GATE_PREFIX + digest


def is_gate_id(aggregate_id: str) -> bool:
    """Whether a history subject's id is a gate's (not a run's)."""
    return aggregate_id.startswith(GATE_PREFIX)


def gate_of(workflow: WorkflowDef, input_json: bytes) -> Gate | None:
    """The gate a run of `workflow` with this input asks (None: the workflow is not gated)."""
    admission = workflow.admission
    if admission is None or not admission.gated:
        return None
    singleton = admission.singleton
    path = singleton.key if singleton is not None else admission.key
    key = value_at(input_json, path) if path else ""
    mode: GateMode = "queue" if singleton is None or singleton.mode == "queue" else singleton.mode
    limit = admission.max_runs if admission.max_runs is not None else 1
    priority = admission.priority
    if admission.priority_key:
        found = value_at(input_json, admission.priority_key)
        priority = _priority_value(found, priority)
    return Gate(
        gate_id=gate_id_of(workflow.name, key), workflow=workflow.name, key=key,
        limit=limit, mode=mode, priority=priority,
    )  # fmt: skip


def value_at(input_json: bytes, path: str) -> str:
    """The JSON text of the value at a dotted path of the input ("null" when absent), cut to
    `limits.admission_key_length_max` characters."""
    try:
        value: object = msgspec.json.decode(input_json)
    except msgspec.DecodeError:
        return "null"
    for part in path.split(".")[: limits.json_depth_max]:
        value = value.get(part) if isinstance(value, dict) else None
    text = msgspec.json.encode(value).decode()
    return text[: limits.admission_key_length_max]


def _priority_value(text: str, default: int) -> int:
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return max(-limits.priority_abs_max, min(limits.priority_abs_max, value))
    return default


def request_for(gate: Gate, run_id: str, at_ms: int, takes_over_from: str = "") -> RequestAdmission:
    return RequestAdmission(
        gate_id=gate.gate_id, run_id=run_id, at_ms=at_ms, limit=gate.limit, mode=gate.mode,
        priority=gate.priority, workflow=gate.workflow, key=gate.key,
        takes_over_from=takes_over_from,
    )  # fmt: skip


# -- decide -------------------------------------------------------------------------------


def decide_admission(
    state: AdmissionState, command: AnyAdmissionCommand
) -> tuple[AnyAdmissionEvent, ...]:
    """The events a request or release leads to (none for one the gate already decided)."""
    assert not state.gate_id or state.gate_id == command.gate_id, (state.gate_id, command)
    events: list[AnyAdmissionEvent] = []
    match command:
        case RequestAdmission():
            _request(state, command, events)
        case ReleaseAdmission():
            if command.run_id in state.holders or _waiting_index(state, command.run_id) >= 0:
                events.append(AdmissionReleased(run_id=command.run_id, at_ms=command.at_ms))
        case SnapshotAdmission():
            if not state.gate_id:
                return ()  # nothing to compact
            return (AdmissionSnapshotted(run_id="", at_ms=command.at_ms, state=state),)
        case _:
            assert_never(command)
    if events:
        events.extend(_fill(fold_admission(state, events), command.at_ms))
    return tuple(events)


def _request(
    state: AdmissionState, command: RequestAdmission, events: list[AnyAdmissionEvent]
) -> None:
    run_id, at_ms = command.run_id, command.at_ms
    if verdict(state, run_id).outcome != "unknown":
        return  # decided before (a redelivered start)
    if state.gate_id == "" or state.limit != command.limit:
        events.append(
            AdmissionOpened(
                run_id=run_id, at_ms=at_ms, gate_id=command.gate_id,
                workflow=command.workflow, key=command.key, limit=max(1, command.limit),
            )
        )  # fmt: skip
    previous = command.takes_over_from
    if previous and previous != run_id and previous in state.holders:
        events.append(AdmissionHandedOver(run_id=run_id, at_ms=at_ms, from_run_id=previous))
        return
    if state.holders and command.mode == "skip":
        holder = state.holders[0]
        events.append(AdmissionSkipped(run_id=run_id, at_ms=at_ms, holder_run_id=holder))
        return
    if state.holders and command.mode == "cancel_previous":
        for holder in state.holders:
            events.append(AdmissionEvicted(run_id=holder, at_ms=at_ms, by_run_id=run_id))
        events.append(AdmissionGranted(run_id=run_id, at_ms=at_ms))
        return
    priority = command.priority
    events.append(
        AdmissionQueued(run_id=run_id, at_ms=at_ms, priority=priority, order=state.next_order)
    )


def _fill(state: AdmissionState, at_ms: int) -> list[AnyAdmissionEvent]:
    """Grant the first waiting runs while slots are free."""
    free = state.limit - len(state.holders)
    return [AdmissionGranted(run_id=w.run_id, at_ms=at_ms) for w in state.waiting[: max(0, free)]]


def _waiting_index(state: AdmissionState, run_id: str) -> int:
    for index, waiting in enumerate(state.waiting):
        if waiting.run_id == run_id:
            return index
    return -1


# -- evolve -------------------------------------------------------------------------------


def evolve_admission(state: AdmissionState, event: AnyAdmissionEvent) -> AdmissionState:
    """Apply one gate event (total, trusting; the slot bound is asserted)."""
    match event:
        case AdmissionOpened():
            return replace(
                state, gate_id=event.gate_id, workflow=event.workflow, key=event.key,
                limit=event.limit,
            )  # fmt: skip
        case AdmissionQueued():
            assert len(state.waiting) < limits.admission_waiting_max, "the gate's queue is full"
            entry = Waiting(run_id=event.run_id, priority=event.priority, order=event.order)
            queue = sorted((*state.waiting, entry), key=lambda w: (-w.priority, w.order))
            return replace(state, waiting=tuple(queue), next_order=event.order + 1)
        case AdmissionGranted():
            assert len(state.holders) < state.limit, f"{state.gate_id}: a grant over the limit"
            holders = (*state.holders, event.run_id)
            waiting = tuple(w for w in state.waiting if w.run_id != event.run_id)
            return replace(state, holders=holders, waiting=waiting)
        case AdmissionSkipped():
            skipped = (*state.skipped, (event.run_id, event.holder_run_id))
            return replace(state, skipped=skipped[-limits.admission_skips_kept :])
        case AdmissionHandedOver():
            assert event.from_run_id in state.holders, f"{event.from_run_id} holds no slot"
            holders = tuple(event.run_id if h == event.from_run_id else h for h in state.holders)
            return replace(state, holders=holders)
        case AdmissionEvicted() | AdmissionReleased():
            holders = tuple(h for h in state.holders if h != event.run_id)
            waiting = tuple(w for w in state.waiting if w.run_id != event.run_id)
            return replace(state, holders=holders, waiting=waiting)
        case AdmissionSnapshotted():
            assert not state.gate_id or state.gate_id == event.state.gate_id, event.state.gate_id
            return event.state
        case _:
            assert_never(event)


def fold_admission(
    state: AdmissionState, events: list[AnyAdmissionEvent] | tuple[AnyAdmissionEvent, ...]
) -> AdmissionState:
    for event in events:
        state = evolve_admission(state, event)
    return state


def check_gate(state: AdmissionState) -> None:
    """The gate's invariants (a grant over the limit is asserted in evolve): never a run
    waiting while a slot is free, no run both holding and waiting."""
    assert not state.waiting or len(state.holders) >= state.limit, "waiting with a free slot"
    assert not set(state.holders) & {w.run_id for w in state.waiting}, "held and waiting"


# -- what the run learns ------------------------------------------------------------------


def verdict(state: AdmissionState, run_id: str) -> AdmissionVerdict:
    """What the gate decided for `run_id` (outcome "unknown": nothing yet, or released)."""
    gate_id = state.gate_id
    if run_id in state.holders:
        return AdmissionVerdict(outcome="admitted", gate_id=gate_id)
    if _waiting_index(state, run_id) >= 0:
        return AdmissionVerdict(outcome="pending", gate_id=gate_id)
    for skipped, holder in state.skipped:
        if skipped == run_id:
            return AdmissionVerdict(outcome="skipped", gate_id=gate_id, holder_run_id=holder)
    return AdmissionVerdict(outcome="unknown", gate_id=gate_id)


class FollowUps(msgspec.Struct, frozen=True, kw_only=True):
    """What the shell does for other runs after a gate decision: start the runs granted a
    slot (other than the requester), cancel the evicted holders (reason names the new run)."""

    admit: tuple[str, ...] = ()
    cancel: tuple[tuple[str, str], ...] = ()


def follow_ups(command: AnyAdmissionCommand, events: tuple[AnyAdmissionEvent, ...]) -> FollowUps:
    admit = tuple(
        e.run_id for e in events if isinstance(e, AdmissionGranted) and e.run_id != command.run_id
    )
    cancel = tuple(
        (e.run_id, f"singleton: replaced by run {e.by_run_id}")
        for e in events
        if isinstance(e, AdmissionEvicted)
    )
    return FollowUps(admit=admit, cancel=cancel)


# -- codec --------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AdmissionDecision)


def encode_admission(command: AnyAdmissionCommand, events: tuple[AnyAdmissionEvent, ...]) -> bytes:
    assert events, "a gate decision appends at least one event"
    return _encoder.encode(AdmissionDecision(command=command, events=events))


def decode_admission(data: bytes) -> AdmissionDecision:
    """A gate's history message (raises msgspec.DecodeError for bytes that are not one)."""
    return _decoder.decode(data)
