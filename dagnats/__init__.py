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

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
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

# Each public name and the module it comes from: imported on first use (PEP 562), so a
# process that needs one part (`dagnats serve` needs no client) does not import them all.
_SOURCES: Final = {
    **dict.fromkeys(("Continue", "Done", "ToolCall", "ToolResult", "Usage"), "dagnats.agent"),
    **dict.fromkeys(
        ("ApprovalNotFoundError", "ApprovalResolvedError", "Client", "PendingApproval"),
        "dagnats.client",
    ),
    **dict.fromkeys(
        ("RunExistsError", "RunFinishedError", "RunNotFoundError", "WaitTimeoutError"),
        "dagnats.client",
    ),
    **dict.fromkeys(("WorkflowNotFoundError",), "dagnats.client"),
    **dict.fromkeys(("NonRetryableError", "RetryAfter", "TaskContext", "Worker"), "dagnats.worker"),
    **dict.fromkeys(("DagnatsError", "WorkflowInvalidError"), "kernel.errors"),
    **dict.fromkeys(("Retry", "Skip", "Workflow"), "kernel.workflow.builder"),
}


def __getattr__(name: str) -> object:
    """The public name `name`, imported from its module on first use."""
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module 'dagnats' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
