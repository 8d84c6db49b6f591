"""The HTTP worker bridge's wire: its task view, its errors (each with its HTTP status and
problem type) and the checks of a poll's arguments. dagnats/api/bridge.py uses them; so do the
routes (dagnats/api/bridge_routes.py). No I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from dagnats.agent import ToolResult, Usage
from dagnats.runtime import settings
from dagnats.runtime.resources import task_subject
from kernel.errors import DagnatsError

Status = Literal["completed", "failed", "sending"]


class BridgeError(DagnatsError):
    """A request the bridge refuses; `status` is its HTTP status, `slug` its problem type."""

    status = 400
    slug = "bad-request"
    title = "Bad request"

    def __init__(self, detail: str, hint: str = "") -> None:
        self.detail = detail
        self.hint = hint
        super().__init__(detail)


class TaskNotFoundError(BridgeError):
    status, slug, title = 404, "task-not-found", "Task not found"

    def __init__(self, task_id: str) -> None:
        super().__init__(
            f"task {task_id[:80]!r} is unknown or its lease expired",
            "a lease lasts the heartbeat timeout from the poll or the last heartbeat; an "
            "expired task was given back and will be delivered again",
        )


class TaskSettledError(BridgeError):
    status, slug, title = 409, "task-settled", "Task already settled"

    def __init__(self, task_id: str, how: str) -> None:
        super().__init__(
            f"task {task_id[:80]!r} was already {how}; nothing more was sent",
            "a task is completed or failed once",
        )


class DeadlinePassedError(BridgeError):
    status, slug, title = 409, "deadline-passed", "Task deadline passed"


class OutputRefusedError(BridgeError):
    status, slug, title = 422, "output-refused", "Output refused"


class BridgeBusyError(BridgeError):
    status, slug, title = 429, "too-many-tasks", "Too many tasks held"


class BridgeRequestError(BridgeError):
    status, slug, title = 422, "invalid-request", "Invalid request"


class BridgeUnavailableError(BridgeError):
    status, slug, title = 503, "nats-unavailable", "NATS unavailable"


class AgentTurnView(msgspec.Struct, frozen=True, kw_only=True):
    """What an agent loop's turn handler sees beside the input (dagnats/agent.py)."""

    turn: int
    state: Any = None
    tool_results: tuple[ToolResult, ...] = ()
    usage: Usage = Usage()


class BridgeTask(msgspec.Struct, frozen=True, kw_only=True):
    """One leased task as an HTTP worker receives it. `input` and `metadata` are JSON;
    `heartbeat_ms` is how often to heartbeat; the lease ends `lease_ms` after the poll or
    the last heartbeat. `idempotency_key` is `<run>:<step>:<attempt>`, as for a native
    worker's `ctx.idempotency_key`."""

    id: str
    task: str
    run_id: str
    step_id: str
    attempt: int
    idempotency_key: str
    deadline_ms: int | None
    lease_ms: int
    heartbeat_ms: int
    input: Any = None
    metadata: Any = None
    previous_errors: tuple[str, ...] = ()
    history_events: int = 0
    should_continue_as_new: bool = False
    agent: AgentTurnView | None = None


def check_poll(
    task_types: Sequence[str], max_tasks: int, timeout_ms: int, worker_id: str
) -> list[str]:
    """The poll's task types, distinct and in order, once every argument is within bounds.

    Raises:
        BridgeRequestError: naming the field, the value and the rule.
    """
    if not 1 <= len(task_types) <= settings.bridge_poll_task_types_max:
        raise BridgeRequestError(
            f"task_types has {len(task_types)} names; it must have "
            f"1..{settings.bridge_poll_task_types_max}"
        )
    if not 1 <= max_tasks <= settings.bridge_poll_tasks_max:
        raise BridgeRequestError(
            f"max_tasks {max_tasks} must be within 1..{settings.bridge_poll_tasks_max}"
        )
    if not 0 <= timeout_ms <= settings.bridge_poll_timeout_ms_max:
        raise BridgeRequestError(
            f"timeout_ms {timeout_ms} must be within 0..{settings.bridge_poll_timeout_ms_max}"
        )
    if len(worker_id) > settings.bridge_worker_id_length_max:
        raise BridgeRequestError(
            f"worker_id is {len(worker_id)} characters; at most "
            f"{settings.bridge_worker_id_length_max}"
        )
    for index, name in enumerate(task_types):
        try:
            task_subject(name)
        except DagnatsError as error:
            raise BridgeRequestError(f"task_types[{index}]: {error}") from None
    return list(dict.fromkeys(task_types))
