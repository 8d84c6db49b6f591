"""Who may do what on NATS: the roles, their nats-server permissions, and command kinds.

Five roles (README "Security"):

- `engine`: the only one that appends history (`dagnats.history.>`), arms timers, publishes
  tasks and dead letters, and manages streams, consumers and KV; it may purge only the
  commands stream (timer cancellation) and delete no stream.
- `worker`: takes tasks (consumer create/info, fetch, ack on DAGNATS_TASKS) and publishes
  results on `dagnats.cmd.<p>.<run>.result` only, and live model output on core NATS
  `dagnats.live.<run>.<step>` (never stored; dagnats/llm/live.py).
- `client`: publishes client commands on `dagnats.cmd.<p>.<run>.client`, external events,
  workflow definitions and manual trigger fire requests (`dagnats.trigger.fire.<key>`);
  reads history, KV snapshots and events.
- `approver`: a client that also publishes human decisions on
  `dagnats.cmd.<p>.<run>.decision.<identity>`, the identity pinned by its permission.
- `admin`: everything, and the only one that may delete or purge streams.

The server enforces subjects; the engine enforces which command types each subject kind may
carry (`authorize_command`) and stamps a decision's `by` from its subject. Commands on the
old layout `dagnats.cmd.<p>.<run>` (before roles) are still read; only the engine and admin
may publish there now.

This module is pure data and rules: it does no I/O.
"""

from __future__ import annotations

from typing import Final, Literal, NamedTuple

import msgspec

from dagnats.runtime.resources import (
    CLUSTER_BUCKET,
    COMMAND_PREFIX,
    COMMANDS_STREAM,
    DEAD_STREAM,
    ENDED_BUCKET,
    HISTORY_STREAM,
    LEASES_BUCKET,
    PROJECTIONS_BUCKET,
    RUNS_BUCKET,
    TASKS_STREAM,
    WORKERS_BUCKET,
    WORKFLOWS_BUCKET,
    task_consumer_name,
    task_subject,
)
from kernel.commands import (
    AnyCommand,
    CancelRun,
    CompleteTask,
    DiscardDeadLetter,
    FailTask,
    ReopenRun,
    ResolveApproval,
    ScheduleRun,
    SendSignal,
    StartRun,
    TaskStarted,
    TerminateRun,
)

Role = Literal["engine", "worker", "client", "approver", "admin"]
ROLES: Final[tuple[Role, ...]] = ("engine", "worker", "client", "approver", "admin")
CommandKind = Literal["engine", "result", "client", "decision", "legacy"]

KIND_RESULT: Final = "result"
KIND_CLIENT: Final = "client"
KIND_DECISION: Final = "decision"
KIND_ENGINE: Final = "engine"
SCHEDULE_SUBJECT_PREFIX: Final = "dagnats.sched."
EVENTS_STREAM_NAME: Final = "DAGNATS_EVENTS"  # external_events.EVENTS_STREAM (no import cycle)
SNAPSHOTS_PROJECTION: Final = "snapshots"  # projector.SNAPSHOTS
TRIGGER_FIRE_PREFIX: Final = "dagnats.trigger.fire"  # manual fire requests (triggers_requests)

# A client (and an approver, who is one) may operate on a run's lifecycle as it may cancel it:
# retry in place, terminate, discard a dead letter (kernel.reopen; README "Security").
_LIFECYCLE: Final[tuple[type, ...]] = (ReopenRun, TerminateRun, DiscardDeadLetter)
# Which command types each subject kind may carry; the engine and legacy kinds carry any.
KIND_COMMANDS: Final[dict[str, tuple[type, ...]]] = {
    KIND_RESULT: (TaskStarted, CompleteTask, FailTask),
    KIND_CLIENT: (StartRun, CancelRun, SendSignal, ScheduleRun, *_LIFECYCLE),
    KIND_DECISION: (ResolveApproval, StartRun, CancelRun, SendSignal, ScheduleRun, *_LIFECYCLE),
}
# The kind each role's connection publishes its commands under.
ROLE_KIND: Final[dict[Role, str]] = {
    "engine": KIND_ENGINE,
    "worker": KIND_RESULT,
    "client": KIND_CLIENT,
    "approver": KIND_DECISION,
    "admin": KIND_ENGINE,
}

API: Final = "$JS.API"
_READABLE_STREAMS: Final = (
    HISTORY_STREAM, EVENTS_STREAM_NAME, DEAD_STREAM,
    f"KV_{WORKFLOWS_BUCKET}", f"KV_{RUNS_BUCKET}", f"KV_{PROJECTIONS_BUCKET}",
    f"KV_{LEASES_BUCKET}", f"KV_{WORKERS_BUCKET}",
    "DAGNATS_TRIGGER_FIRES", "KV_dagnats_triggers",  # triggers: fire records, managed triggers
    "DAGNATS_RETENTION",  # retention.RETENTION_STREAM: the purged runs (`run list --purged`)
)  # fmt: skip


class Permissions(msgspec.Struct, frozen=True, kw_only=True):
    """One user's nats-server permissions (rendered into its `permissions` block)."""

    publish_allow: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_allow: tuple[str, ...]

    def to_config(self) -> dict[str, object]:
        publish: dict[str, object] = {"allow": list(self.publish_allow)}
        if self.publish_deny:
            publish["deny"] = list(self.publish_deny)
        return {"publish": publish, "subscribe": {"allow": list(self.subscribe_allow)}}


def inbox_prefix(user: str) -> str:
    """The user's own reply-subject prefix (`_INBOX_<user>`): nobody else may subscribe to
    it, so no role reads another's API replies or consumer deliveries."""
    return f"_INBOX_{user}"


def permissions(
    role: Role, user: str, identity: str = "", task_types: tuple[str, ...] = ()
) -> Permissions:
    """The nats-server permissions of `user` in `role` (`identity`: an approver's name;
    `task_types`: the only task types a scoped worker may take, none: all)."""
    inbox = f"{inbox_prefix(user)}.>"
    match role:
        case "admin":
            return Permissions(publish_allow=(">",), subscribe_allow=(">",))
        case "engine":
            return Permissions(
                publish_allow=(">",),
                publish_deny=(
                    f"{API}.STREAM.DELETE.>",
                    f"{API}.STREAM.PURGE.{HISTORY_STREAM}",
                    f"{API}.STREAM.MSG.DELETE.{HISTORY_STREAM}",
                    f"{API}.STREAM.UPDATE.{HISTORY_STREAM}",
                    f"{API}.STREAM.PURGE.{TASKS_STREAM}",
                    f"{API}.STREAM.PURGE.{DEAD_STREAM}",
                ),
                subscribe_allow=(">",),
            )
        case "worker":
            return Permissions(
                publish_allow=_worker_publish(task_types, user), subscribe_allow=(inbox,)
            )
        case "client" | "approver":
            approving: tuple[str, ...] = ()
            if role == "approver":
                assert identity, "an approver needs an identity"
                approving = (f"{COMMAND_PREFIX}.*.*.{KIND_DECISION}.{identity}",)
            allow = (
                *approving,
                f"{COMMAND_PREFIX}.*.*.{KIND_CLIENT}",
                "dagnats.event.>",
                f"$KV.{WORKFLOWS_BUCKET}.>",
                f"$KV.{PROJECTIONS_BUCKET}.>",  # users' own projections' checkpoints ...
                f"$KV.{LEASES_BUCKET}.>",
                "$KV.dagnats_triggers.>",  # `dagnats trigger enable|disable`
                f"{TRIGGER_FIRE_PREFIX}.*",  # `dagnats trigger fire`: asks the engine to fire
                *_reader_publish(),
            )
            deny = (  # ... but not those of serve's snapshot projection
                f"$KV.{PROJECTIONS_BUCKET}.{SNAPSHOTS_PROJECTION}",
                f"$KV.{LEASES_BUCKET}.projection.{SNAPSHOTS_PROJECTION}",
            )
            return Permissions(
                publish_allow=allow, publish_deny=deny, subscribe_allow=(inbox, "dagnats.>")
            )


def _worker_publish(task_types: tuple[str, ...], user: str = "") -> tuple[str, ...]:
    """Results, dead task messages, its own entries in the worker directory, and taking
    tasks: of every type, or (scoped) only from the durable consumers of `task_types` (task
    types, or grouped lanes `type@group`), created only with their own filter subject."""
    tasks = TASKS_STREAM
    common = (
        f"{COMMAND_PREFIX}.*.*.{KIND_RESULT}",
        f"$KV.{WORKERS_BUCKET}.{user or 'open'}.*",  # its entries (runtime/workers_directory)
        f"{API}.STREAM.MSG.GET.KV_{ENDED_BUCKET}",  # ended runs' markers (runtime/ended_runs)
        f"{API}.DIRECT.GET.KV_{ENDED_BUCKET}.>",  # the same, read directly (no API request)
        f"{API}.STREAM.MSG.GET.KV_{CLUSTER_BUCKET}",  # the partition count (partition_count)
        "dagnats.dead.task",  # a task message it cannot decode, set aside
        "dagnats.live.>",  # a handler's live output (core NATS; clients subscribe to dagnats.>)
    )
    if not task_types:
        return (
            *common,
            f"{API}.CONSUMER.MSG.NEXT.{tasks}.*",
            f"{API}.CONSUMER.INFO.{tasks}.*",
            f"{API}.CONSUMER.CREATE.{tasks}.*",
            f"{API}.CONSUMER.CREATE.{tasks}.*.>",
            f"{API}.CONSUMER.DURABLE.CREATE.{tasks}.*",
            f"$JS.ACK.{tasks}.>",
        )
    rules: list[str] = list(common)
    for task_type in task_types:
        consumer = task_consumer_name(task_type)
        rules += [
            f"{API}.CONSUMER.MSG.NEXT.{tasks}.{consumer}",
            f"{API}.CONSUMER.INFO.{tasks}.{consumer}",
            f"{API}.CONSUMER.CREATE.{tasks}.{consumer}.{task_subject(task_type)}",
            f"$JS.ACK.{tasks}.{consumer}.>",
        ]
    return tuple(rules)


def _reader_publish() -> tuple[str, ...]:
    """Reading history, events, dead letters and KV: stream info, direct and message gets,
    ordered consumers (create, delete, flow control), never on the work queues."""
    rules: list[str] = [f"{API}.INFO", f"{API}.STREAM.INFO.*", "$JS.FC.>"]
    for stream in _READABLE_STREAMS:
        rules += [
            f"{API}.DIRECT.GET.{stream}",
            f"{API}.DIRECT.GET.{stream}.>",
            f"{API}.STREAM.MSG.GET.{stream}",
            f"{API}.CONSUMER.CREATE.{stream}",
            f"{API}.CONSUMER.CREATE.{stream}.>",
            f"{API}.CONSUMER.DELETE.{stream}.*",
            f"{API}.CONSUMER.INFO.{stream}.*",
        ]
    # `Client.wait` looks whether a start waits in the commands stream (a message get only).
    rules.append(f"{API}.STREAM.MSG.GET.{COMMANDS_STREAM}")
    # Commands carry the deployment's stored partition count (runtime/partition_count).
    rules.append(f"{API}.STREAM.MSG.GET.KV_{CLUSTER_BUCKET}")
    return tuple(rules)


# -- command kinds ----------------------------------------------------------------------


def command_kind_tokens(role: Role, identity: str = "") -> str:
    """The subject tokens after `<run_id>` a role's commands carry (`decision.alice`)."""
    kind = ROLE_KIND[role]
    if kind == KIND_DECISION:
        assert identity, "an approver needs an identity"
        return f"{kind}.{identity}"
    return kind


_COMMAND_PREFIX_DOT: Final = COMMAND_PREFIX + "."
_PREFIX_TOKENS: Final = COMMAND_PREFIX.count(".") + 1  # (the prefix's tokens: 2)


def split_command_subject(subject: str) -> tuple[str, str, str]:
    """(run_id, kind, identity) of a command subject; kind "legacy" for the layout before
    roles (`dagnats.cmd.<p>.<run>`), "" for a subject of no known kind."""
    assert subject.startswith(_COMMAND_PREFIX_DOT), f"{subject!r} is not a command subject"
    rest = subject.split(".")[_PREFIX_TOKENS + 1 :]  # after the partition
    if len(rest) == 1:
        return rest[0], "legacy", ""
    if len(rest) == 2 and rest[1] in (KIND_RESULT, KIND_CLIENT, KIND_ENGINE):
        return rest[0], rest[1], ""
    if len(rest) == 3 and rest[1] == KIND_DECISION:
        return rest[0], KIND_DECISION, rest[2]
    return (rest[0] if rest else ""), "", ""


def run_id_of_command_subject(subject: str) -> str:
    """The run id of a command subject, either layout."""
    return split_command_subject(subject)[0]


class Refused(NamedTuple):
    """A command not decided when it comes (the engine's `_authorize`): why in a word
    ("command": it does not decode, "forbidden": both set aside as dead letters of that
    kind; "parked": its run is parked, the command comes back), why in full, and the command
    when it decoded."""

    kind: str
    reason: str
    command: AnyCommand | None


def authorize_command(
    subject: str, command: AnyCommand, scheduler: str | None = None
) -> AnyCommand | str:
    """The command as the engine should decide it, or why it is refused.

    A command must name the run of its subject, be of a type its subject's kind may carry,
    and, when a message schedule fired it (`scheduler`: the schedule's subject), come from
    one of the engine's timer subjects. A decision's `by` is the identity in its subject.
    """
    run_id, kind, identity = split_command_subject(subject)
    name = type(command).__name__
    if scheduler is not None and not scheduler.startswith(SCHEDULE_SUBJECT_PREFIX):
        return f"{name} fired by a message schedule on {scheduler!r}: only timers may schedule"
    if run_id != command.run_id:
        return f"{name} for run {command.run_id!r} arrived on {subject!r} (run {run_id!r})"
    if kind == "":
        return f"{name} arrived on {subject!r}, a subject of no command kind"
    if kind in (KIND_ENGINE, "legacy"):
        return command
    if not isinstance(command, KIND_COMMANDS[kind]):
        allowed = ", ".join(t.__name__ for t in KIND_COMMANDS[kind])
        return f"{name} is not a {kind} command (a {kind} subject carries {allowed})"
    if isinstance(command, ResolveApproval):
        return msgspec.structs.replace(command, by=identity)
    return command
