"""Names of the NATS resources (ARCHITECTURE §5), subject builders, and their idempotent creation.

Every stream, bucket and subject the runtime uses is named here once. `ensure_resources`
creates what is missing and checks what exists; it never changes an existing resource:
one whose configuration differs in a field we set raises `ResourceConfigError`.
Subject builders validate their tokens so no id can inject wildcards or extra tokens.

This module may talk to the JetStream API (create, inspect); it may not publish messages.
"""

from __future__ import annotations

import logging
import re
import zlib
from dataclasses import dataclass
from typing import Final

import msgspec
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext, api

from dagnats.runtime import settings
from kernel.errors import DagnatsError
from kernel.workflow import WorkflowDef

HISTORY_STREAM: Final = "DAGNATS_HISTORY"
COMMANDS_STREAM: Final = "DAGNATS_COMMANDS"
TASKS_STREAM: Final = "DAGNATS_TASKS"
DEAD_STREAM: Final = "DAGNATS_DEAD"

HISTORY_PREFIX: Final = "dagnats.history"
COMMAND_PREFIX: Final = "dagnats.cmd"
SCHEDULE_PREFIX: Final = "dagnats.sched"
TASK_PREFIX: Final = "dagnats.task"
DEAD_PREFIX: Final = "dagnats.dead"
# nats-server republishes every message the history stream stores on `dagnats.stored.<run_id>`
# (the stream's `republish`), with its sequence and the run's previous one in headers: a
# run's watch is a core subscription there, not a consumer (dagnats/client/live_watch.py).
STORED_PREFIX: Final = "dagnats.stored"
STORED_SUBJECTS: Final = f"{STORED_PREFIX}.>"
HISTORY_SUBJECTS: Final = f"{HISTORY_PREFIX}.>"
COMMAND_SUBJECTS: Final = f"{COMMAND_PREFIX}.>"
SCHEDULE_SUBJECTS: Final = f"{SCHEDULE_PREFIX}.>"
TASK_SUBJECTS: Final = f"{TASK_PREFIX}.>"
DEAD_SUBJECTS: Final = f"{DEAD_PREFIX}.>"
# One message each work-queue stream keeps that no consumer ever takes (runtime/queue_anchor):
# '@' starts no task type's token and a schedule subject has two tokens after its prefix, so
# no task consumer's, engine consumer's or timer's subject is ever one of these.
TASKS_ANCHOR_SUBJECT: Final = f"{TASK_PREFIX}.@anchor"
COMMANDS_ANCHOR_SUBJECT: Final = f"{SCHEDULE_PREFIX}.@anchor"

WORKFLOWS_BUCKET: Final = "dagnats_workflows"
RUNS_BUCKET: Final = "dagnats_runs"
PROJECTIONS_BUCKET: Final = "dagnats_projections"
WORKERS_BUCKET: Final = "dagnats_workers"  # live workers (dagnats/runtime/workers_directory)
ENDED_BUCKET: Final = "dagnats_ended"  # ended runs' markers (dagnats/runtime/ended_runs)
GROUP_MARK: Final = "@"  # between a task type and its worker group in a lane (task_lane)
LEASES_BUCKET: Final = "dagnats_leases"  # who runs each shared projection (dagnats/runtime/lease)
# The partition count chosen at first start (runtime/partitions); who owns each partition.
CLUSTER_BUCKET: Final = "dagnats_cluster"
OWNERS_BUCKET: Final = "dagnats_owners"
WORKFLOWS_HISTORY: Final = 16
log = logging.getLogger("dagnats.resources")

ENGINE_CONSUMER: Final = "dagnats_engine"
DEAD_REASON_HEADER: Final = "Dagnats-Dead-Reason"

_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]+")
_DOTTED: Final = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_TOKEN_RULE: Final = "must be 1..{max} characters of A-Z a-z 0-9 '_' '-'"
_DOTTED_RULE: Final = (
    "must be 1..{max} characters of A-Z a-z 0-9 '_' '-', with '.' only between such characters"
)


class SubjectTokenError(DagnatsError):
    """An id that cannot be a NATS subject token (run id, task type, timer id, kind)."""

    def __init__(self, field: str, value: str, rule: str) -> None:
        self.field = field
        self.value = value
        self.rule = rule
        super().__init__(f"{field} {value!r} {rule}")


class ResourceConfigError(DagnatsError):
    """An existing stream or bucket whose configuration differs from what DagNats needs."""

    def __init__(self, resource: str, field: str, found: object, wanted: object) -> None:
        self.resource = resource
        self.field = field
        self.found = found
        self.wanted = wanted
        super().__init__(
            f"{resource}: {field} is {found!r}, DagNats needs {wanted!r}; "
            "it will not change an existing resource (fix or delete it by hand)"
        )


# -- subjects ---------------------------------------------------------------------------------


def check_token(field: str, value: str, length_max: int, *, dotted: bool = False) -> str:
    """Return `value` if it is a safe subject token (or dotted tokens), else raise.

    Raises:
        SubjectTokenError: naming the field, the value and the rule.
    """
    pattern, rule = (_DOTTED, _DOTTED_RULE) if dotted else (_TOKEN, _TOKEN_RULE)
    if len(value) > length_max or pattern.fullmatch(value) is None:
        raise SubjectTokenError(field, value, rule.format(max=length_max))
    return value


def check_run_id(run_id: str) -> str:
    """Return run_id if it is a safe single subject token, else raise SubjectTokenError."""
    return check_token("run_id", run_id, settings.run_id_length_max)


def partition_of(run_id: str, partitions: int) -> int:
    """The stable partition of a run: crc32 of its id modulo the partition count."""
    assert 1 <= partitions <= settings.partitions_max, f"partitions {partitions} out of range"
    partition = zlib.crc32(run_id.encode()) % partitions
    assert 0 <= partition < partitions
    return partition


def history_subject(run_id: str) -> str:
    """`dagnats.history.<run_id>`: the run's whole story."""
    subject = _history_subjects.get(run_id)  # (every append asks: a run's id checked once)
    if subject is None:
        subject = f"{HISTORY_PREFIX}.{check_run_id(run_id)}"
        _remember(_history_subjects, run_id, subject)
    return subject


# Subjects built from ids already checked (history subjects by run id, task subjects by lane):
# a pure memo (only a valid id is kept, and its subject is what the builder makes), bounded by
# `settings.subjects_cached_max` and cleared when full.
_history_subjects: dict[str, str] = {}
_task_subjects: dict[str, str] = {}


def _remember(memo: dict[str, str], key: str, subject: str) -> None:
    if len(memo) >= settings.subjects_cached_max:
        memo.clear()
    memo[key] = subject


def stored_subject(run_id: str) -> str:
    """`dagnats.stored.<run_id>`: the run's history messages as nats-server stores them
    (republished, never stored again)."""
    return f"{STORED_PREFIX}.{check_run_id(run_id)}"


def history_republish() -> api.RePublish:
    """The history stream's `republish`: each stored message again on its stored subject."""
    return api.RePublish(src=HISTORY_SUBJECTS, dest=STORED_SUBJECTS)


def command_subject(
    run_id: str, partitions: int = settings.partitions_default, kind: str | None = None
) -> str:
    """`dagnats.cmd.<partition>.<run_id>.<kind>`: where the run's commands of one kind go
    (`result`, `client`, `decision.<identity>`, `engine`: see runtime/roles). Without a kind,
    the layout before roles, `dagnats.cmd.<partition>.<run_id>`, which the engine still reads
    and only the engine and admin may publish to."""
    base = f"{COMMAND_PREFIX}.{partition_of(check_run_id(run_id), partitions)}.{run_id}"
    if kind is None:
        return base
    check_token("command kind", kind, settings.run_id_length_max, dotted=True)
    return f"{base}.{kind}"


def run_commands_filter(run_id: str, partitions: int = settings.partitions_default) -> str:
    """`dagnats.cmd.<partition>.<run_id>.>`: every command of the run, of any kind."""
    return f"{command_subject(run_id, partitions)}.>"


def command_partition_filter(partition: int) -> str:
    """`dagnats.cmd.<partition>.>`: the filter of an engine owning one partition."""
    assert 0 <= partition < settings.partitions_max
    return f"{COMMAND_PREFIX}.{partition}.>"


def task_lane(task_type: str, group: str = "") -> str:
    """Where tasks of `task_type` for worker group `group` wait: the task type itself when
    ungrouped, else `<task_type>@<group>` (README "Worker groups"; '@' is in no task type)."""
    if not group:
        return task_type
    check_token("group", group, settings.worker_group_length_max)
    return f"{task_type}{GROUP_MARK}{group}"


def split_lane(lane: str) -> tuple[str, str]:
    """(task type, group) of a lane (`task_lane`); group "" when ungrouped."""
    task_type, _, group = lane.partition(GROUP_MARK)
    return task_type, group


def task_subject(lane: str) -> str:
    """`dagnats.task.<task_type>` (task types may be dotted: `email.send`), or for a grouped
    lane `dagnats.task.<task_type>.@<group>`: no task type's subject is a grouped one's."""
    subject = _task_subjects.get(lane)  # (every task message asks: a lane checked once)
    if subject is None:
        subject = _task_subject(lane)
        _remember(_task_subjects, lane, subject)
    return subject


def _task_subject(lane: str) -> str:
    task_type, group = split_lane(lane)
    check_token("task_type", task_type, settings.task_type_length_max, dotted=True)
    if GROUP_MARK in lane:
        check_token("group", group, settings.worker_group_length_max)
        return f"{TASK_PREFIX}.{task_type}.{GROUP_MARK}{group}"
    subject = f"{TASK_PREFIX}.{task_type}"
    assert subject != TASKS_ANCHOR_SUBJECT, "a task type's subject is never the anchor's"
    return subject


def task_consumer_name(lane: str) -> str:
    """The durable consumer of a task type (or of a grouped lane). Consumer names cannot hold
    '.' or '@', so both become '_' and the crc32 of the real name keeps `a.b`, `a_b` and
    `a@b` apart."""
    task_subject(lane)  # validates
    checksum = zlib.crc32(lane.encode())
    return f"dagnats_task_{lane.replace('.', '_').replace(GROUP_MARK, '_')}_{checksum:08x}"


def schedule_subject(run_id: str, timer_id: str) -> str:
    """`dagnats.sched.<run_id>.<timer_id>`: the one schedule of a timer (timer ids may be
    dotted; the run id is one token, so the subject names the pair unambiguously)."""
    check_token("timer_id", timer_id, settings.timer_id_length_max, dotted=True)
    return f"{SCHEDULE_PREFIX}.{check_run_id(run_id)}.{timer_id}"


def dead_subject(kind: str) -> str:
    """`dagnats.dead.<kind>`: dead letters of one kind (`command`, `unknown_run`, ...)."""
    return f"{DEAD_PREFIX}.{check_token('kind', kind, settings.dead_kind_length_max)}"


def run_id_of_history_subject(subject: str) -> str:
    """The run id of a `dagnats.history.<run_id>` subject."""
    prefix = HISTORY_PREFIX + "."
    assert subject.startswith(prefix), f"{subject!r} is not a history subject"
    return subject[len(prefix) :]


# -- the workflow store ------------------------------------------------------------------------
#
# A value of the workflows bucket is the definition's JSON with one more field, `revision`:
# the workflow's own revision number (1, 2, 3 ... for each name). Older entries have no such
# field (their number is their place in the key's history); readers of the definition alone
# (`msgspec.json.decode(value, type=WorkflowDef)`) skip the field.

stored_shown_bytes_max: Final = 60


class StoredWorkflowError(DagnatsError):
    """An entry of the workflows bucket that is not a workflow definition (written by hand)."""

    hint = "register the workflow again with `dagnats workflow register FILE`"

    def __init__(self, name: str, kv_revision: int | None, problem: str) -> None:
        self.name = name
        self.kv_revision = kv_revision
        super().__init__(
            f"workflow {name!r}: the stored entry (bucket {WORKFLOWS_BUCKET}, sequence "
            f"{kv_revision}) is not a workflow definition: {problem}"
        )


class _Revision(msgspec.Struct, frozen=True):
    revision: int | None = None


def encode_stored_workflow(definition: bytes, revision: int) -> bytes:
    """The bucket value of a definition's JSON object at the workflow's own `revision`."""
    assert definition.startswith(b"{") and revision >= 1, "a JSON object and a revision >= 1"
    rest = definition[1:]
    separator = b"" if rest.lstrip().startswith(b"}") else b","
    return b'{"revision":%d%s%s' % (revision, separator, rest)


def decode_stored_workflow(
    name: str, value: bytes, kv_revision: int | None = None
) -> tuple[WorkflowDef, int | None]:
    """The definition of a bucket value and its own revision (None for older entries).

    Raises:
        StoredWorkflowError: the value is not a stored workflow definition.
    """
    try:
        workflow = msgspec.json.decode(value, type=WorkflowDef)
        revision = msgspec.json.decode(value, type=_Revision).revision
    except (msgspec.DecodeError, RecursionError) as error:
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise StoredWorkflowError(name, kv_revision, problem) from None
    if revision is not None and revision < 1:
        raise StoredWorkflowError(name, kv_revision, f"revision {revision} is below 1")
    return workflow, revision


# -- resources ------------------------------------------------------------------------------


# The StreamConfig fields DagNats sets; an existing stream must match each one set (not None).
# Not its replicas: a stream keeps the count it has (a warning names `dagnats admin replicas`).
CHECKED_STREAM_FIELDS: Final = (
    "subjects", "retention", "storage", "max_msg_size", "duplicate_window",
    "max_age", "allow_direct", "allow_msg_schedules",
)  # fmt: skip
REPLICAS_HINT: Final = "change it with `dagnats admin replicas N` (docs/deployment.md)"


def stream_configs(replicas: int = 1) -> tuple[api.StreamConfig, ...]:
    """The streams of ARCHITECTURE §5 plus dead letters, with `replicas` copies each."""
    assert 1 <= replicas <= 5, f"replicas {replicas} out of 1..5"
    storage = api.StorageType.FILE
    size = settings.stream_message_bytes_max
    return (
        api.StreamConfig(
            name=HISTORY_STREAM, subjects=[HISTORY_SUBJECTS],
            retention=api.RetentionPolicy.LIMITS, allow_direct=True,
            republish=history_republish(),
            duplicate_window=settings.history_duplicate_window_ms / 1000,
            storage=storage, num_replicas=replicas, max_msg_size=size,
        ),
        api.StreamConfig(
            name=COMMANDS_STREAM, subjects=[COMMAND_SUBJECTS, SCHEDULE_SUBJECTS],
            retention=api.RetentionPolicy.WORK_QUEUE, allow_msg_schedules=True,
            duplicate_window=settings.command_duplicate_window_ms / 1000,
            storage=storage, num_replicas=replicas, max_msg_size=size,
        ),
        api.StreamConfig(
            name=TASKS_STREAM, subjects=[TASK_SUBJECTS],
            retention=api.RetentionPolicy.WORK_QUEUE,
            duplicate_window=settings.task_duplicate_window_ms / 1000,
            storage=storage, num_replicas=replicas, max_msg_size=size,
        ),
        api.StreamConfig(
            name=DEAD_STREAM, subjects=[DEAD_SUBJECTS],
            retention=api.RetentionPolicy.LIMITS,
            max_age=settings.dead_letter_age_ms_max / 1000,
            duplicate_window=settings.command_duplicate_window_ms / 1000,
            storage=storage, num_replicas=replicas, max_msg_size=size,
        ),
    )  # fmt: skip


@dataclass(frozen=True)
class BucketSpec:
    """A KV bucket we need (`ttl_ms` > 0: a value not rewritten within it expires)."""

    bucket: str
    history: int
    ttl_ms: int = 0
    direct: bool = False  # direct gets allowed (a worker reads ended markers at every task)


BUCKETS: Final = (
    BucketSpec(WORKFLOWS_BUCKET, WORKFLOWS_HISTORY),
    BucketSpec(RUNS_BUCKET, 1),
    BucketSpec(PROJECTIONS_BUCKET, 1),
    BucketSpec(WORKERS_BUCKET, 1, ttl_ms=settings.worker_directory_ttl_ms),
    BucketSpec(ENDED_BUCKET, 1, ttl_ms=settings.ended_marker_ttl_ms, direct=True),
    BucketSpec(LEASES_BUCKET, 1, ttl_ms=settings.lease_ttl_ms),
    BucketSpec(CLUSTER_BUCKET, 1),
    BucketSpec(OWNERS_BUCKET, 1, ttl_ms=settings.partition_lease_ttl_ms),
)
LEASES: Final = next(spec for spec in BUCKETS if spec.bucket == LEASES_BUCKET)
OWNERS: Final = next(spec for spec in BUCKETS if spec.bucket == OWNERS_BUCKET)


async def ensure_resources(connection: Client | JetStreamContext, *, replicas: int = 1) -> None:
    """Create every stream and KV bucket DagNats needs, or check the existing ones.

    Args:
        connection: a connected client, or its JetStream context.
        replicas: copies of each stream (1 on one machine, 3 on a cluster).
    Raises:
        ResourceConfigError: an existing resource differs in a field we set, or the
            server's max_payload is below `settings.stream_message_bytes_max`.
    """
    js = connection.jetstream() if isinstance(connection, Client) else connection
    max_payload = js._nc.max_payload  # the client learnt it from the server's INFO
    if max_payload < settings.stream_message_bytes_max:
        raise ResourceConfigError(
            "nats-server", "max_payload", max_payload, settings.stream_message_bytes_max
        )
    for config in stream_configs(replicas):
        await ensure_stream(js, config, note_replicas=True)
    for bucket in BUCKETS:
        await ensure_bucket(js, bucket, replicas=replicas, note_replicas=True)


async def ensure_stream(
    js: JetStreamContext, config: api.StreamConfig, *, note_replicas: bool = False
) -> None:
    """Create the stream if missing; raise ResourceConfigError if it exists and differs."""
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(config)
            return
        except nats.js.errors.BadRequestError:  # created meanwhile with another config
            info = await js.stream_info(config.name)
    wanted = {field: getattr(config, field) for field in CHECKED_STREAM_FIELDS}
    check_config(config.name, info.config, wanted)
    if note_replicas:
        _note_replicas(config.name, info.config.num_replicas, config.num_replicas)


def republishes(config: api.StreamConfig) -> bool:
    """Whether a history stream's config republishes its messages as run watches expect."""
    republish = config.republish
    return (
        republish is not None and republish.src in (None, HISTORY_SUBJECTS)
        and republish.dest == STORED_SUBJECTS and not republish.headers_only
    )  # fmt: skip


async def ensure_history_republish(js: JetStreamContext) -> bool:
    """Give the history stream its `republish` when it has none (a stream made before it had
    one); whether it now republishes as run watches expect. Updating the history stream needs
    the admin role (the engine's may not).

    Raises:
        nats.js.errors.Error, nats.errors.Error: the stream could not be read or updated.
    """
    info = await js.stream_info(HISTORY_STREAM)
    if republishes(info.config):
        return True
    if info.config.republish is not None:  # the operator's own: left as it is
        return False
    await js.update_stream(info.config.evolve(republish=history_republish()))
    return True


async def ensure_bucket(
    js: JetStreamContext, spec: BucketSpec, *, replicas: int, note_replicas: bool = False
) -> None:
    """Create the KV bucket if missing; raise ResourceConfigError if it exists and differs."""
    stream = f"KV_{spec.bucket}"
    wanted: dict[str, object] = {
        "max_msgs_per_subject": spec.history,
        "storage": api.StorageType.FILE,
        "max_age": spec.ttl_ms / 1000 if spec.ttl_ms else None,
    }
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        config = api.KeyValueConfig(
            bucket=spec.bucket,
            history=spec.history,
            storage=api.StorageType.FILE,
            replicas=replicas,
            max_value_size=settings.stream_message_bytes_max,
            ttl=spec.ttl_ms / 1000 if spec.ttl_ms else None,
            direct=spec.direct,
        )
        try:
            await js.create_key_value(config)
            return
        except nats.js.errors.BadRequestError:
            info = await js.stream_info(stream)
    check_config(f"KV bucket {spec.bucket}", info.config, wanted)
    if spec.direct and not info.config.allow_direct:  # a bucket made before it allowed them
        await js.update_stream(info.config.evolve(allow_direct=True))
    if note_replicas:
        _note_replicas(stream, info.config.num_replicas, replicas)


_replicas_noted: set[tuple[str, int, int]] = set()


def _note_replicas(stream: str, found: int | None, wanted: int | None) -> None:
    """Say once (per stream and counts) that a stream keeps other replicas than asked: a
    replica change is an operator's command, never a side effect of a start."""
    key = (stream, found or 1, wanted or 1)
    if key[1] == key[2] or key in _replicas_noted:
        return
    _replicas_noted.add(key)
    log.warning("%s keeps %d replica(s), this start asked for %d; %s", stream, key[1], key[2],
                REPLICAS_HINT)  # fmt: skip


async def set_replicas(
    js: JetStreamContext, replicas: int, extra: tuple[str, ...] = ()
) -> list[tuple[str, int, int]]:
    """Give every DagNats stream and bucket (and the `extra` streams) `replicas` copies;
    JetStream moves the data.

    Returns:
        (stream, replicas before, after) of each stream found; missing ones are skipped.
    Raises:
        nats.js.errors.APIError: the server refused (say, fewer nodes than replicas).
    """
    assert 1 <= replicas <= 5, replicas
    names = [config.name for config in stream_configs()] + [f"KV_{b.bucket}" for b in BUCKETS]
    names.extend(extra)
    changed: list[tuple[str, int, int]] = []
    for name in names:
        assert name is not None
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            continue
        before = info.config.num_replicas or 1
        if before != replicas:
            await js.update_stream(info.config.evolve(num_replicas=replicas))
        changed.append((name, before, replicas))
    return changed


def check_config(resource: str, found: object, wanted: dict[str, object]) -> None:
    """Raise ResourceConfigError on the first field of `wanted` (not None) whose value in
    `found` (a StreamConfig or ConsumerConfig) differs; lists compare as sets."""
    for field, value in wanted.items():
        if value is None:  # not set by DagNats: whatever the operator chose
            continue
        actual = getattr(found, field)
        if isinstance(value, list) and isinstance(actual, list):
            same = sorted(map(str, value)) == sorted(map(str, actual))
        else:
            same = actual == value
        if not same:
            raise ResourceConfigError(resource, field, _plain(actual), _plain(value))


def _plain(value: object) -> object:
    """Enum members as their value, so errors read `'limits'`, not `<RetentionPolicy...>`."""
    enum_value = getattr(value, "value", None)
    return enum_value if isinstance(enum_value, str) else value
