"""What a handler sees of its attempt (`TaskContext`), the task envelope the SDK reads, and
`NonRetryableError`; re-exported by dagnats/worker.py, where users import them from.

This module does no I/O: it decodes the task message's fields.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Final, Protocol, TypeVar, runtime_checkable

import msgspec
from opentelemetry import trace

from dagnats.agent import ToolCall, ToolResult, Usage, child_call, read_turn_input
from dagnats.observe import tracing
from kernel import limits
from kernel.effects import EnqueueTask
from kernel.errors import DagnatsError

T = TypeVar("T")


class NonRetryableError(DagnatsError):
    """Raise from a handler to fail the step without further attempts."""


@runtime_checkable
class LivePublisher(Protocol):
    """Where a handler's live output goes (core NATS, never history): dagnats/llm/live.py."""

    async def publish_live(self, subject: str, data: bytes) -> None: ...


class TaskEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """What the SDK reads of a task's envelope (`EnqueueTask.envelope`, written by the step
    type): a planner's `previous_errors`, an agent loop turn's `turn`. Other fields are
    ignored; a task without an envelope reads as the defaults."""

    previous_errors: tuple[str, ...] = ()
    turn: int = 0


NO_ENVELOPE: Final = TaskEnvelope()
# The usage of a task that is no agent turn (frozen: one for all; a frozen dataclass made per
# task was a good part of a no-op task's Python work in the worker).
NO_USAGE: Final = Usage()


def read_envelope(task: EnqueueTask) -> TaskEnvelope:
    """The task's envelope (the defaults when it has none, or one the SDK cannot read)."""
    if bytes(task.envelope) == b"null":
        return NO_ENVELOPE
    try:
        return msgspec.json.decode(bytes(task.envelope), type=TaskEnvelope)
    except msgspec.DecodeError:  # (a ValidationError too) an envelope of a newer step type
        return NO_ENVELOPE


class TaskContext:
    """What a handler knows about the attempt it runs."""

    def __init__(self, task: EnqueueTask, worker_id: str) -> None:
        self.task_type = task.task
        self.run_id = task.run_id
        self.step_id = task.step_id
        self.attempt = task.attempt
        self.input_raw = bytes(task.input)
        self.metadata: dict[str, Any] = msgspec.json.decode(bytes(task.metadata))
        self.deadline_ms = task.deadline_ms
        envelope = read_envelope(task)
        # A planner's retry: the problems of the plan its previous attempt returned.
        self.previous_errors: tuple[str, ...] = envelope.previous_errors
        # An agent loop's turn (turn > 0): its envelope unpacked (dagnats/agent.py).
        self.turn = envelope.turn
        self.state: Any = None
        self.tool_results: tuple[ToolResult, ...] = ()
        self.usage = NO_USAGE
        if envelope.turn > 0:
            turn_input = read_turn_input(self.input_raw)
            self.input_raw = turn_input.input_raw
            self.state = turn_input.state
            self.tool_results = turn_input.tool_results
            self.usage = turn_input.usage
        # The run's history size when the task was scheduled, and whether it passed the soft
        # limit: time to carry the state into a fresh run (a `continue_as_new` step).
        self.children: list[ToolCall] = []  # child runs started this turn (start_child)
        self.history_events = task.history_events
        self.should_continue_as_new = task.history_events >= limits.history_events_soft_max
        self.worker_id = worker_id
        # Set by the worker when its connection can publish live output (dagnats/llm/live.py).
        self.live: LivePublisher | None = None
        self.idempotency_key = f"{task.run_id}:{task.step_id}:{task.attempt}"

    # The tracer and the logger are made when a handler first reads them (most never do: a
    # logger per task cost a lookup under the logging lock and an adapter).
    @functools.cached_property
    def tracer(self) -> trace.Tracer:
        """The tracer of the handler's own spans: they join the run's trace."""
        return tracing.handler_tracer()

    @functools.cached_property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """The task type's logger (`dagnats.task.<type>`), its records carrying the attempt."""
        return logging.LoggerAdapter(
            logging.getLogger(f"dagnats.task.{self.task_type}"),
            {"run_id": self.run_id, "step_id": self.step_id, "attempt": self.attempt},
        )

    def start_child(self, workflow: Any, input: Any = None, *, id: str = "") -> str:
        """Start a child run when this agent turn ends: of the registered workflow named
        `workflow`, or of a workflow the agent wrote (a document as a dict, or a WorkflowDef).
        It is a tool call: the engine checks the run's `child_runs` quotas, and the child's
        output (or the refusal, or its failure) is its result in the next turn's
        `tool_results`. Returns the call's id. The turn must return `Continue`.

        Raises:
            NonRetryableError: this task is no agent loop turn (nothing would wait for it).
        """
        if self.turn <= 0:
            raise NonRetryableError(
                "start_child works in an agent_loop turn only: a child run is a tool call, "
                "whose result the next turn sees"
            )
        call = child_call(workflow, input, id or f"child{len(self.children)}")
        self.children.append(call)
        return call.id

    @property
    def input(self) -> Any:
        """The step input, decoded from JSON into plain Python values."""
        return msgspec.json.decode(self.input_raw)

    def input_as(self, type_: type[T]) -> T:
        """The step input decoded and validated as `type_` (a msgspec Struct, dataclass, ...).

        Raises:
            NonRetryableError: the input does not match `type_` (retrying cannot fix it).
        """
        try:
            return msgspec.json.decode(self.input_raw, type=type_)
        except msgspec.ValidationError as error:
            raise NonRetryableError(f"input does not match {type_.__name__}: {error}") from None
