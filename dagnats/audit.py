"""The replay audit: does the recorded history still agree with the current code?

For each recorded history message, in order: it must decode (upcasting old versions); `decide`
on the state before it, given its recorded command, must give exactly its recorded events; and
those events must fold. Then the stored caches are compared with the fold: a run snapshot with
the state at its `last_seq`, the SQLite `runs`/`steps` rows with the state at the row's
`last_seq`. The first divergence is reported with its index (1-based, in the run's history),
its command, and what was recorded against what the code gives now.

Pure: the caller reads the history, the snapshot and the rows. It re-decides history, so it
lives in the shell, not in `projections/` (which may import only `kernel`). This module may
import only `kernel`, the standard library, msgspec and `projections`; `dagnats.replay` (files)
and `Client.audit` (a live run) call it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final, Literal

import msgspec

from kernel import codec
from kernel.batch import decide_stored
from kernel.commands import AnyCommand, Rejection
from kernel.decide import decide
from kernel.errors import DagnatsError
from kernel.events import AnyEvent
from kernel.reducer import evolve
from kernel.state import INITIAL_STATE, RunState
from projections.snapshot import Snapshot
from projections.sqlite import RUN_COLUMNS, STEP_COLUMNS, Row, run_row, step_row

DivergenceKind = Literal["decode", "decide", "fold", "snapshot", "rows"]
Decide = Callable[[RunState, AnyCommand], tuple[AnyEvent, ...] | Rejection]
shown_chars_max: Final = 400


class Divergence(msgspec.Struct, frozen=True, kw_only=True):
    """Where the recorded history (or a cache of it) and the current code disagree."""

    kind: DivergenceKind
    index: int  # 1-based position of the history message; 0 when not about one message
    seq: int  # its stream sequence (or the cache's position)
    command: str  # the recorded command, short
    recorded: str
    now: str
    message: str

    def describe(self) -> str:
        """A few lines for a terminal."""
        lines = [f"divergence ({self.kind}) at message {self.index} (seq {self.seq}): "]
        lines[0] += self.message
        if self.command:
            lines.append(f"  command:  {self.command}")
        lines.append(f"  recorded: {self.recorded}")
        lines.append(f"  now:      {self.now}")
        return "\n".join(lines)


class AuditReport(msgspec.Struct, frozen=True, kw_only=True):
    """What an audit checked and the first divergence it found (None: consistent)."""

    run_id: str
    messages: int
    events: int
    status: str
    last_seq: int
    snapshot_checked: bool = False
    rows_checked: bool = False
    divergence: Divergence | None = None

    @property
    def consistent(self) -> bool:
        return self.divergence is None

    def summary(self) -> str:
        """One line: "consistent" with counts, or the divergence's first line."""
        if self.divergence is None:
            checked = [name for name, done in (("snapshot", self.snapshot_checked),
                                               ("rows", self.rows_checked)) if done]  # fmt: skip
            also = f"; {' and '.join(checked)} agree" if checked else ""
            return (
                f"run {self.run_id}: consistent ({self.messages} messages, {self.events} events, "
                f"{self.status}{also})"
            )
        return f"run {self.run_id}: " + self.divergence.describe()


def _short(value: object) -> str:
    if isinstance(value, msgspec.Struct):
        text = codec.encode(value).decode()
    elif isinstance(value, tuple | list) and all(isinstance(v, msgspec.Struct) for v in value):
        text = "[" + ", ".join(codec.encode(v).decode() for v in value) + "]"
    else:
        text = repr(value)
    return text if len(text) <= shown_chars_max else text[: shown_chars_max - 1] + "…"


def _first_difference(
    recorded: tuple[AnyEvent, ...], now: tuple[AnyEvent, ...]
) -> tuple[int, str, str]:
    for position in range(max(len(recorded), len(now))):
        left = recorded[position] if position < len(recorded) else None
        right = now[position] if position < len(now) else None
        if left != right:
            shown = [_short(v) if v is not None else "(no event)" for v in (left, right)]
            return position, shown[0], shown[1]
    raise AssertionError("the event lists are equal")


class _Audit:
    def __init__(self, run_id: str, decide_function: Decide, wanted_seqs: set[int]) -> None:
        self.run_id = run_id
        self.decide = decide_function
        self.state = INITIAL_STATE
        self.messages = 0
        self.events = 0
        self.last_seq = 0
        self.wanted_seqs = wanted_seqs
        self.states_at: dict[int, RunState] = {}

    def step(self, seq: int, data: bytes) -> Divergence | None:
        self.messages += 1
        index = self.messages
        try:
            decision = codec.decode_decision(data)
        except DagnatsError as error:
            recorded = data[:shown_chars_max].decode(errors="replace")
            return Divergence(
                kind="decode", index=index, seq=seq, command="", recorded=recorded,
                now=str(error), message="the message no longer decodes",
            )  # fmt: skip
        command = decision.command
        try:
            decided = decide_stored(self.state, command, self.decide)
        except AssertionError as error:
            decided = Rejection(run_id=command.run_id, code="invalid", message=f"assert: {error}")
        if isinstance(decided, Rejection) or decided != decision.events:
            if isinstance(decided, Rejection):
                position, recorded = 0, _short(decision.events)
                now = f"rejected ({decided.code}): {decided.message}"
            else:
                position, recorded, now = _first_difference(decision.events, decided)
            return Divergence(
                kind="decide", index=index, seq=seq, command=_short(command), recorded=recorded,
                now=now, message=f"decide gives other events (event {position + 1} differs)",
            )  # fmt: skip
        try:
            for event in decision.events:
                self.state = evolve(self.state, event)
        except AssertionError as error:
            return Divergence(
                kind="fold", index=index, seq=seq, command=_short(command),
                recorded=_short(decision.events), now=str(error),
                message="the recorded events no longer fold",
            )  # fmt: skip
        self.events += len(decision.events)
        self.last_seq = seq
        if seq in self.wanted_seqs:
            self.states_at[seq] = self.state
        return None


def audit_history(
    run_id: str,
    messages: Iterable[tuple[int, bytes]],
    *,
    decide_function: Decide = decide,
    snapshot: Snapshot | None = None,
    rows: tuple[Row | None, list[Row]] | None = None,
) -> AuditReport:
    """Audit one run's recorded history, and the caches of it that are given.

    Args:
        run_id: the run.
        messages: its history messages as (stream sequence, stored bytes), in order.
        decide_function: the decide to check against (the kernel's; a test double in tests).
        snapshot: the run's stored snapshot, if any.
        rows: the run's stored `runs` row and `steps` rows (projections.sqlite.stored_rows).
    Returns:
        The report; `report.divergence` is the first disagreement, None when consistent.
    """
    run = rows[0] if rows is not None else None
    row_seq = int(str(run[RUN_COLUMNS.index("last_seq")])) if run is not None else 0
    wanted = {snapshot.last_seq} if snapshot is not None else set()
    wanted.add(row_seq)
    audit = _Audit(run_id, decide_function, wanted)
    divergence: Divergence | None = None
    for seq, data in messages:
        divergence = audit.step(seq, data)
        if divergence is not None:
            break
    report = AuditReport(
        run_id=run_id,
        messages=audit.messages,
        events=audit.events,
        status=audit.state.status,
        last_seq=audit.last_seq,
        divergence=divergence,
    )
    if divergence is not None:
        return report
    if snapshot is not None:
        divergence = _check_snapshot(audit, snapshot)
        report = msgspec.structs.replace(report, snapshot_checked=True, divergence=divergence)
        if divergence is not None:
            return report
    if rows is not None:
        divergence = _check_rows(audit, rows, row_seq)
        report = msgspec.structs.replace(report, rows_checked=True, divergence=divergence)
    return report


def _check_snapshot(audit: _Audit, snapshot: Snapshot) -> Divergence | None:
    state = audit.states_at.get(snapshot.last_seq)
    if state is None:
        return Divergence(
            kind="snapshot", index=0, seq=snapshot.last_seq, command="",
            recorded=f"history ends at seq {audit.last_seq}", now=f"seq {snapshot.last_seq}",
            message="the snapshot is at a sequence that is not a message of this run",
        )  # fmt: skip
    if state == snapshot.state:
        return None
    folded = msgspec.structs.asdict(state)
    stored = msgspec.structs.asdict(snapshot.state)
    field = next(name for name in folded if folded[name] != stored[name])
    return Divergence(
        kind="snapshot", index=0, seq=snapshot.last_seq, command="",
        recorded=_short(folded[field]), now=_short(stored[field]),
        message=f"the snapshot's {field!r} differs from the fold (recorded = fold, now = stored)",
    )  # fmt: skip


def _check_rows(
    audit: _Audit, rows: tuple[Row | None, list[Row]], row_seq: int
) -> Divergence | None:
    run, steps = rows
    state = audit.states_at.get(row_seq)
    if run is None or state is None or state.workflow is None:
        return Divergence(
            kind="rows", index=0, seq=row_seq, command="", recorded="a runs row",
            now="none" if run is None else f"a row at seq {row_seq}, not a message of this run",
            message="the SQLite runs row is missing or at an unknown sequence",
        )  # fmt: skip
    expected_run = run_row(state, row_seq)
    for column, want, found in zip(RUN_COLUMNS, expected_run, run, strict=True):
        if want != found:
            return _row_divergence(row_seq, f"runs.{column}", want, found)
    by_step = {row[1]: row for row in steps}
    for index, step in enumerate(state.steps):
        want_row = step_row(state, index)
        found_row = by_step.get(step.step_id)
        if found_row is None:
            return _row_divergence(row_seq, f"steps[{step.step_id}]", want_row, None)
        for position, column in enumerate(STEP_COLUMNS):
            if want_row[position] != found_row[position]:
                return _row_divergence(
                    row_seq, f"steps[{step.step_id}].{column}", want_row[position],
                    found_row[position],
                )  # fmt: skip
    return None


def _row_divergence(seq: int, where: str, want: object, found: object) -> Divergence:
    return Divergence(
        kind="rows", index=0, seq=seq, command="", recorded=_short(want), now=_short(found),
        message=f"SQLite {where} differs from the fold (recorded = fold, now = stored)",
    )  # fmt: skip
