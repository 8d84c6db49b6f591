"""DagNats: a durable DAG workflow engine on NATS JetStream alone.

The public API: `Worker` and `TaskContext` to serve tasks, `Client` to register workflows and
start, watch and cancel runs, and the builder to write workflows in Python.
"""

from dagnats.agent import Continue, Done, ToolCall, ToolResult, Usage
from dagnats.client import (
    ApprovalNotFoundError,
    ApprovalResolvedError,
    Client,
    PendingApproval,
    RunExistsError,
    RunFinishedError,
    RunNotFoundError,
    WaitTimeoutError,
    WorkflowNotFoundError,
)
from dagnats.worker import NonRetryableError, RetryAfter, TaskContext, Worker
from kernel.errors import DagnatsError, WorkflowInvalidError

__all__ = [
    "ApprovalNotFoundError",
    "ApprovalResolvedError",
    "Client",
    "Continue",
    "DagnatsError",
    "Done",
    "NonRetryableError",
    "PendingApproval",
    "RetryAfter",
    "RunExistsError",
    "RunFinishedError",
    "RunNotFoundError",
    "TaskContext",
    "ToolCall",
    "ToolResult",
    "Usage",
    "WaitTimeoutError",
    "Worker",
    "WorkflowInvalidError",
    "WorkflowNotFoundError",
]
