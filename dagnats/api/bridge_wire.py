"""The HTTP worker bridge's wire: its task view, its errors (each with its HTTP status and
problem type) and the checks of a poll's arguments. dagnats/api/bridge.py uses them; so do the
routes (dagnats/api/bridge_routes.py). No I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import msgspec

from dagnats.agent import Continue, Done, ToolResult, Usage, turn_result
from dagnats.runtime import settings
from dagnats.runtime.resources import task_subject
from dagnats.worker_safety import cut_text, output_problem
from kernel import limits
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


class ResultItem(NamedTuple):
    """One task's result for `TaskBridge.settle`: a completion (`output`, or `turn` for an
    agent turn) when `error` is None, else a failure (retryable or not)."""

    id: str
    output: object = None
    turn: Continue | Done | None = None
    error: str | None = None
    retryable: bool = True
    retry_after_ms: int | None = None
    traceback: str = ""


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


def check_retry_after(retryable: bool, retry_after_ms: int | None) -> None:
    """A failure's `retry_after_ms` is within bounds, and only with retryable true.

    Raises:
        BridgeRequestError: naming the field, the value and the rule.
    """
    if retry_after_ms is None:
        return
    if not retryable:
        raise BridgeRequestError(
            "retry_after_ms is given with retryable false",
            "a non-retryable failure is not retried; drop one of them",
        )
    if not 0 <= retry_after_ms <= limits.delay_ms_max:
        raise BridgeRequestError(
            f"retry_after_ms {retry_after_ms} must be within 0..{limits.delay_ms_max}"
        )


def checked_output(item: ResultItem, is_turn: bool) -> tuple[bytes, str | None]:
    """The encoded output of a completion, or (b"", why a native worker would refuse it:
    recorded as an invalid_output failure).

    Raises:
        BridgeRequestError: `turn` for a task that is no agent turn (nothing is settled).
    """
    if item.turn is not None and not is_turn:
        raise BridgeRequestError(
            f"task {item.id[:80]!r} is not an agent loop turn: `turn` is refused",
            'complete it with {"output": ...}',
        )
    value: object = item.output
    if is_turn:
        value = turn_result(item.turn) if item.turn is not None else None
        if value is None:
            return b"", 'an agent turn must be completed with turn {"agent": "continue" | "done"}'
    found = output_problem(value)
    if found is not None:
        return b"", cut_text(f"the output cannot be sent: {found}")
    encoded = msgspec.json.encode(value)
    if len(encoded) > limits.payload_bytes_max:
        limit = limits.payload_bytes_max
        return b"", f"the output is {len(encoded)} bytes; the limit is {limit} bytes"
    return encoded, None
