"""What a projection is, and the pure, synchronous part of running one into SQLite.

A projection consumes the history stream: every history message (one decision: a command and
its events) has a stream sequence, and each event a position `(seq, index, run_id)`. A
projection has a `name`, a `version` (a change rebuilds it from sequence 0), the event tags it
wants (`events`, None for all) and `apply(store, event, at)`.

`SqliteRunner` applies batches of history messages to a `SqliteProjection` and stores the
checkpoint (the last applied sequence) in the same SQLite transaction as the projection's
writes, so a crash anywhere leaves both or neither: a redelivered message (seq <= checkpoint)
is never applied twice and none is missed. The NATS side (reading the stream, timing, lag)
lives in `dagnats/projector.py`; this module may import only `kernel`, the standard library,
msgspec and sqlite-utils, and does no I/O of its own beyond the `Database` it is handed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

import msgspec

from kernel import codec
from kernel.admission import is_gate_id
from kernel.errors import DagnatsError
from kernel.events import AnyEvent, Event

if TYPE_CHECKING:  # (the engine imports this module for the snapshots: no sqlite-utils there)
    from sqlite_utils import Database

CHECKPOINTS_TABLE: Final = "_dagnats_projections"
batch_messages_max: Final = 1_000  # history messages applied in one transaction
fingerprints_cached_max: Final = 64  # projection schemas whose digest is kept (one per class)

Message = tuple[int, str, bytes]  # (stream sequence, run id, history message bytes)
# The events of the history message at a stream sequence, as a caller already decoded them
# from its bytes (None: it did not).
Decoded = Callable[[int], tuple[AnyEvent, ...] | None]
StoreT_contra = TypeVar("StoreT_contra", contravariant=True)

_tags: dict[type[Event], str] = {}


def tag_of(event: AnyEvent) -> str:
    """The dotted tag of an event (`step.completed`)."""
    event_type = type(event)
    tag = _tags.get(event_type)
    if tag is None:
        found = event_type.__struct_config__.tag
        assert isinstance(found, str), event_type
        tag = _tags[event_type] = found
    return tag


class Position(msgspec.Struct, frozen=True):
    """Where an event is: its message's stream sequence, its index there, its run."""

    seq: int
    index: int
    run_id: str


class Projection(Protocol[StoreT_contra]):
    """A consumer of the history stream writing into a store of type `StoreT_contra`."""

    @property
    def name(self) -> str:
        """Unique name; the key of its checkpoint."""
        ...

    @property
    def version(self) -> int:
        """Bump it when `apply` changes meaning: the projection is rebuilt from sequence 0."""
        ...

    @property
    def events(self) -> frozenset[str] | None:
        """The event tags it wants (`{"step.failed"}`), or None for every event."""
        ...

    def apply(self, store: StoreT_contra, event: AnyEvent, at: Position) -> None:
        """Apply one event found at `at`. Called once per event, in stream order."""
        ...


class SqliteProjection(Projection["Database"], Protocol):
    """A projection into tables of a SQLite database (sqlite-utils)."""

    @property
    def tables(self) -> tuple[str, ...]:
        """The tables it owns: dropped when it is rebuilt."""
        ...

    def create(self, db: Database) -> None:
        """Create its tables and indexes if missing (inside the runner's transaction)."""
        ...

    def flush(self, db: Database) -> None:
        """Write what `apply` buffered; called once per batch, before the checkpoint."""
        ...

    def discard(self) -> None:
        """Forget what `apply` buffered: the batch's transaction was rolled back."""
        ...


class SqliteProjectionBase:
    """Defaults for a SqliteProjection: every event, nothing buffered. Subclass it."""

    name: str = ""
    version: int = 1
    events: frozenset[str] | None = None
    tables: tuple[str, ...] = ()
    # The statements `create` runs (CREATE ... IF NOT EXISTS). Declared, they let
    # `SqliteRunner.open` skip `create` while the database has them already; a projection whose
    # `create` does more leaves it empty.
    schema: tuple[str, ...] = ()

    def create(self, db: Database) -> None:
        """Create the tables: run the `schema` statements; override to do more."""
        for statement in self.schema:
            db.execute(statement)

    def apply(self, db: Database, event: AnyEvent, at: Position) -> None:
        """Apply one event; override."""

    def flush(self, db: Database) -> None:
        """Nothing buffered by default."""

    def discard(self) -> None:
        """Nothing buffered by default."""

    def begin(self, after_seq: int) -> None:
        """A batch begins, in its transaction, after the checkpoint `after_seq` (checked to be
        the stored one). Nothing to do by default: a projection that keeps what it wrote in
        memory across batches trusts it only when this is the sequence it last committed."""

    def committed(self, seq: int) -> None:
        """The batch's transaction committed; the stored checkpoint is `seq`. Nothing to do
        by default."""


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A projection's stored position: the last applied stream sequence."""

    name: str
    version: int
    seq: int
    events: int = 0  # events applied since the last rebuild
    updated_at_ms: int = 0
    tables: tuple[str, ...] = ()


class CheckpointMovedError(DagnatsError):
    """The stored checkpoint is not where the runner left it (someone rebuilt it)."""

    def __init__(self, name: str, expected_seq: int, stored_seq: int) -> None:
        self.name = name
        self.expected_seq = expected_seq
        self.stored_seq = stored_seq
        super().__init__(
            f"projection {name!r}: checkpoint is {stored_seq}, the runner expected {expected_seq}"
        )


class BatchResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one batch did: the new checkpoint, events applied, messages skipped as bad."""

    seq: int
    applied: int
    problems: tuple[str, ...] = ()


def positioned_events(
    messages: Iterable[Message],
    after_seq: int,
    wants: frozenset[str] | None,
    problems: list[str],
    decoded: Decoded | None = None,
) -> Iterator[tuple[Position, AnyEvent]]:
    """The wanted events of messages with seq > after_seq (older ones are redeliveries), with
    their positions. A message that does not decode is skipped and named in `problems`.
    `decoded(seq)`, when given, is the caller's decoding of the message at `seq` (None: not
    decoded, or not decodable), taken instead of decoding its bytes again."""
    for seq, run_id, data in messages:
        if seq <= after_seq or is_gate_id(run_id):
            continue  # (a gate's history is admission's, kernel/admission.py, not a run's)
        events = decoded(seq) if decoded is not None else None
        if events is None:
            try:
                events = codec.decode_events(data)  # (the command is not needed)
            except DagnatsError as error:
                problems.append(f"history message {seq} of run {run_id!r} skipped: {error}")
                continue
        for index, event in enumerate(events):
            if wants is None or tag_of(event) in wants:
                yield Position(seq, index, run_id), event


@contextlib.contextmanager
def write_transaction(db: Database) -> Iterator[None]:
    """One write transaction, taken at once (BEGIN IMMEDIATE): a deferred one that read first
    could not upgrade to write when another writer committed meanwhile (SQLITE_BUSY). Writes
    by sqlite-utils inside it nest as savepoints."""
    connection = db.conn
    assert not connection.in_transaction, "a write transaction is already open"
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        connection.rollback()  # a no-op when an error already ended the transaction
        raise
    connection.commit()


def read_checkpoint(db: Database, name: str) -> Checkpoint | None:
    """The stored checkpoint of projection `name`, or None."""
    try:  # (not `db.table_names()` first: a query of sqlite_master on every batch)
        row = db.conn.execute(_CHECKPOINT_SELECT, [name]).fetchone()
    except sqlite3.OperationalError as error:
        if _no_such_table(error):
            return None
        raise
    if row is None:
        return None
    version, seq, events, updated_at_ms, tables = row
    return Checkpoint(
        name=name,
        version=version,
        seq=seq,
        events=events,
        updated_at_ms=updated_at_ms,
        tables=tuple(msgspec.json.decode(tables or "[]", type=list[str])),
    )


_CHECKPOINT_SELECT: Final = (
    f"SELECT version, seq, events, updated_at_ms, tables FROM {CHECKPOINTS_TABLE} WHERE name = ?"
)


_POSITION_SELECT: Final = f"SELECT version, seq, events FROM {CHECKPOINTS_TABLE} WHERE name = ?"
_POSITION_UPDATE: Final = (
    f"UPDATE {CHECKPOINTS_TABLE} SET seq = ?, events = ?, updated_at_ms = ? WHERE name = ?"
)


def _stored_position(db: Database, name: str) -> tuple[int, int, int] | None:
    """(version, seq, events) of the stored checkpoint of `name`, or None: what a batch checks
    and moves (the rest of the checkpoint stays as `open` wrote it)."""
    try:
        row = db.conn.execute(_POSITION_SELECT, [name]).fetchone()
    except sqlite3.OperationalError as error:
        if _no_such_table(error):
            return None
        raise
    return (row[0], row[1], row[2]) if row is not None else None


def _no_such_table(error: sqlite3.OperationalError) -> bool:
    return str(error).startswith("no such table")


def read_checkpoints(db: Database) -> list[Checkpoint]:
    """Every checkpoint stored in the database, by name."""
    if CHECKPOINTS_TABLE not in db.table_names():
        return []
    names = [row[0] for row in db.execute(f"SELECT name FROM {CHECKPOINTS_TABLE} ORDER BY name")]
    return [c for c in (read_checkpoint(db, name) for name in names) if c is not None]


def _ensure_checkpoints_table(db: Database) -> None:
    """The checkpoints table, with its `schema` column (added to the table of an older file)."""
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {CHECKPOINTS_TABLE} (name TEXT PRIMARY KEY, "
        "version INTEGER NOT NULL, seq INTEGER NOT NULL, events INTEGER NOT NULL, "
        "updated_at_ms INTEGER NOT NULL, tables TEXT NOT NULL, schema TEXT NOT NULL DEFAULT '')"
    )
    columns = {row[1] for row in db.conn.execute(f"PRAGMA table_info({CHECKPOINTS_TABLE})")}
    if "schema" not in columns:
        db.execute(f"ALTER TABLE {CHECKPOINTS_TABLE} ADD COLUMN schema TEXT NOT NULL DEFAULT ''")


_STAMP_SELECT: Final = f"SELECT seq, schema FROM {CHECKPOINTS_TABLE} WHERE name = ?"


def schema_fingerprint(projection: SqliteProjection) -> str:
    """A digest of the projection's name, version, tables and declared `schema` statements;
    "" when it declares none (its `create` then runs at every open)."""
    statements = getattr(projection, "schema", ())
    if not isinstance(statements, tuple) or not statements:
        return ""
    return _fingerprint(projection.name, projection.version, tuple(projection.tables), statements)


@functools.lru_cache(maxsize=fingerprints_cached_max)
def _fingerprint(name: str, version: int, tables: tuple[str, ...], schema: tuple[str, ...]) -> str:
    text = msgspec.json.encode([name, version, tables, schema])
    return hashlib.blake2b(text, digest_size=16).hexdigest()


def _schema_stamp(db: Database, fingerprint: str) -> str:
    """The stamp of a schema in this database: its fingerprint and SQLite's schema version (it
    moves with every CREATE, DROP or ALTER, so a table dropped by hand changes the stamp)."""
    (schema_version,) = db.conn.execute("PRAGMA schema_version").fetchone()
    return f"{fingerprint}.{schema_version}"


def _stamped_seq(db: Database, name: str, fingerprint: str) -> int | None:
    """The stored checkpoint's sequence when its schema stamp is this database's now; None when
    the projection must be created (no checkpoint, another stamp, an older checkpoints table)."""
    try:
        row = db.conn.execute(_STAMP_SELECT, [name]).fetchone()
    except sqlite3.OperationalError as error:
        if _no_such_table(error) or str(error).startswith("no such column"):
            return None
        raise
    if row is None or row[1] != _schema_stamp(db, fingerprint):
        return None
    seq = row[0]
    assert isinstance(seq, int) and seq >= 0, seq
    return seq


def _write_checkpoint(db: Database, checkpoint: Checkpoint) -> None:
    db.conn.execute(
        f"INSERT INTO {CHECKPOINTS_TABLE} (name, version, seq, events, updated_at_ms, tables) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET version = excluded.version, "
        "seq = excluded.seq, events = excluded.events, updated_at_ms = excluded.updated_at_ms, "
        "tables = excluded.tables",
        [
            checkpoint.name,
            checkpoint.version,
            checkpoint.seq,
            checkpoint.events,
            checkpoint.updated_at_ms,
            msgspec.json.encode(list(checkpoint.tables)).decode(),
        ],
    )


def reset_projection(db: Database, name: str, tables: Iterable[str] = ()) -> None:
    """Drop a projection's tables (those given and those its checkpoint names) and set its
    checkpoint back to 0, in one transaction: it is rebuilt from sequence 0."""
    with write_transaction(db):
        _ensure_checkpoints_table(db)
        stored = read_checkpoint(db, name)
        owned = set(tables) | set(stored.tables if stored is not None else ())
        for table in sorted(owned):
            db.execute(f'DROP TABLE IF EXISTS "{table}"')
        db.execute(f"DELETE FROM {CHECKPOINTS_TABLE} WHERE name = ?", [name])


class SqliteRunner:
    """Applies history messages to one SqliteProjection, checkpoint in the same transaction."""

    def __init__(self, db: Database, projection: SqliteProjection) -> None:
        assert projection.name, "a projection needs a name"
        assert projection.version >= 1, f"{projection.name}: version must be >= 1"
        self.db = db
        self.projection = projection

    def open(self, now_ms: int = 0) -> int:
        """Create the projection's tables; rebuild it when its stored version differs. A
        projection that declares its `schema` is not created again while the checkpoint's stamp
        of it (version, tables, statements, the database's schema version) holds.

        Returns:
            The sequence to resume after (0: from the beginning).
        """
        projection = self.projection
        fingerprint = schema_fingerprint(projection)
        if fingerprint:
            seq = _stamped_seq(self.db, projection.name, fingerprint)
            if seq is not None:
                return seq
        with write_transaction(self.db):
            _ensure_checkpoints_table(self.db)
        stored = read_checkpoint(self.db, projection.name)
        if stored is not None and stored.version != projection.version:
            reset_projection(self.db, projection.name, projection.tables)
            stored = None
        with write_transaction(self.db):
            projection.create(self.db)
            if stored is None:
                stored = Checkpoint(
                    name=projection.name,
                    version=projection.version,
                    seq=0,
                    updated_at_ms=now_ms,
                    tables=projection.tables,
                )
                _write_checkpoint(self.db, stored)
            if fingerprint:  # (after the schema's statements: the stamp is of the schema now)
                stamp = _schema_stamp(self.db, fingerprint)
                self.db.conn.execute(
                    f"UPDATE {CHECKPOINTS_TABLE} SET schema = ? WHERE name = ?",
                    [stamp, projection.name],
                )
        return stored.seq

    def checkpoint(self) -> Checkpoint | None:
        return read_checkpoint(self.db, self.projection.name)

    def apply_batch(
        self,
        messages: list[Message],
        *,
        after_seq: int,
        now_ms: int,
        decoded: Decoded | None = None,
    ) -> BatchResult:
        """Apply the messages with seq > after_seq and store the new checkpoint, atomically.

        Args:
            messages: history messages in stream order (at most `batch_messages_max`).
            after_seq: the checkpoint the caller believes is stored.
            now_ms: the time to record with the checkpoint.
            decoded: the caller's decoding of messages it already decoded (`positioned_events`).
        Raises:
            CheckpointMovedError: the stored checkpoint is not `after_seq` (a rebuild); nothing
                is applied.
        """
        assert len(messages) <= batch_messages_max, len(messages)
        problems: list[str] = []
        try:  # (a failed commit too: what the projection kept of this batch is forgotten)
            with write_transaction(self.db):
                stored_events = self.begin_checked(after_seq)
                applied = self.apply_part(messages, after_seq, problems, decoded)
                last_seq = max([after_seq, *(message[0] for message in messages)])
                self.end_batch(last_seq, stored_events + applied, now_ms)
        except BaseException:
            self.projection.discard()
            raise
        self.committed(last_seq)
        return BatchResult(seq=last_seq, applied=applied, problems=tuple(problems))

    # A batch in steps, for a caller that lets other work run between them (inside one write
    # transaction it opened: `begin_checked`, then `apply_part` for each slice of the batch,
    # then `end_batch`, commit, and `committed`; on a failure, roll back and `discard`).

    def begin_checked(self, after_seq: int) -> int:
        """Check, inside the batch's transaction, that the stored checkpoint is `after_seq`,
        and tell the projection a batch begins; the events applied so far (stored with it).

        Raises:
            CheckpointMovedError: the stored checkpoint is not `after_seq` (a rebuild).
        """
        projection = self.projection
        assert self.db.conn.in_transaction, "begin the batch's transaction first"
        stored = _stored_position(self.db, projection.name)
        if stored is None or stored[1] != after_seq or stored[0] != projection.version:
            raise CheckpointMovedError(
                projection.name, after_seq, stored[1] if stored is not None else 0
            )
        begin = getattr(projection, "begin", None)  # (optional: SqliteProjectionBase has it)
        if begin is not None:
            begin(after_seq)
        return int(stored[2])

    def apply_part(
        self,
        messages: list[Message],
        after_seq: int,
        problems: list[str],
        decoded: Decoded | None = None,
    ) -> int:
        """Apply the events of a slice of the batch (messages with seq > after_seq, the
        batch's checkpoint); how many were applied. Undecodable messages go to `problems`."""
        projection = self.projection
        applied = 0
        for at, event in positioned_events(
            messages, after_seq, projection.events, problems, decoded
        ):
            projection.apply(self.db, event, at)
            applied += 1
        return applied

    def end_batch(self, last_seq: int, events: int, now_ms: int, *, flushed: bool = False) -> None:
        """Write what the projection buffered (unless the caller `flushed` it) and the
        checkpoint `last_seq` (with `events` applied in all), in the batch's transaction; the
        caller commits it."""
        if not flushed:
            self.projection.flush(self.db)
        self.db.conn.execute(_POSITION_UPDATE, [last_seq, events, now_ms, self.projection.name])

    def committed(self, seq: int) -> None:
        """The batch's transaction committed at checkpoint `seq`: tell the projection."""
        committed = getattr(self.projection, "committed", None)
        if committed is not None:
            committed(seq)

    def apply_all(self, messages: Iterable[Message], *, now_ms: int = 0) -> int:
        """Apply messages in batches from the stored checkpoint (tests, offline rebuilds).

        Returns:
            The last checkpoint.
        """
        seq = self.open(now_ms)
        batch: list[Message] = []
        for message in messages:
            batch.append(message)
            if len(batch) == batch_messages_max:
                seq = self.apply_batch(batch, after_seq=seq, now_ms=now_ms).seq
                batch = []
        if batch:
            seq = self.apply_batch(batch, after_seq=seq, now_ms=now_ms).seq
        return seq
