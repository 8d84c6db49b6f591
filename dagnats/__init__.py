"""DagNats: a durable DAG workflow engine on NATS JetStream alone.

The public API: `Worker` and `TaskContext` to serve tasks, `Client` to register workflows and
start, watch and cancel runs, and the builder (`Workflow`, `Retry`, `Skip`) to write workflows
in Python.

dagnats/ is the shell around the pure core: it may import `kernel/`, `steps/` and
`projections/`, and none of them imports it. Inside: `runtime/` (the serve process), `client/`,
`cli/` (the `dagnats` command, which nothing else imports), `sim/` (deterministic simulation),
`worker.py` and `agent.py` (the worker SDK), `audit.py` and `replay.py` (replay audits),
`testing.py` (pytest helpers). `tests/test_import_graph.py` checks that no import cycles.
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
from kernel.workflow.builder import Retry, Skip, Workflow

__all__ = [
    "ApprovalNotFoundError",
    "ApprovalResolvedError",
    "Client",
    "Continue",
    "DagnatsError",
    "Done",
    "NonRetryableError",
    "PendingApproval",
    "Retry",
    "RetryAfter",
    "RunExistsError",
    "RunFinishedError",
    "RunNotFoundError",
    "Skip",
    "TaskContext",
    "ToolCall",
    "ToolResult",
    "Usage",
    "WaitTimeoutError",
    "Worker",
    "Workflow",
    "WorkflowInvalidError",
    "WorkflowNotFoundError",
]
