"""DagNats: a durable DAG workflow engine on NATS JetStream alone.

The public API: `Worker` and `TaskContext` to serve tasks, `Client` to register workflows and
start, watch and cancel runs, and the builder to write workflows in Python.
"""

from dagnats.client import (
    Client,
    RunExistsError,
    RunFinishedError,
    RunNotFoundError,
    WaitTimeoutError,
    WorkflowNotFoundError,
)
from dagnats.worker import NonRetryableError, RetryAfter, TaskContext, Worker
from kernel.errors import DagnatsError, WorkflowInvalidError

__all__ = [
    "Client",
    "DagnatsError",
    "NonRetryableError",
    "RetryAfter",
    "RunExistsError",
    "RunFinishedError",
    "RunNotFoundError",
    "TaskContext",
    "WaitTimeoutError",
    "Worker",
    "WorkflowInvalidError",
    "WorkflowNotFoundError",
]
