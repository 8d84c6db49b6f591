"""client/: the Python client of a DagNats deployment (`from dagnats.client import Client`).

`core.py` holds `Client` (workflows, runs, signals, events, audits); `approvals.py` and
`chains.py` the approval and continue-as-new parts it delegates to; `errors.py` the errors they
raise. The sub-modules import each other (never this `__init__`) and `dagnats.runtime`,
`kernel`, `projections`; the client is imported by `dagnats.cli`, `dagnats.runtime.serve`'s
local stack and users. Nothing under `kernel/`, `steps/` or `projections/` imports it.
"""

from dagnats.client.approvals import PendingApproval
from dagnats.client.chains import ChainLink
from dagnats.client.core import ChildLink, Client
from dagnats.client.errors import (
    ApprovalNotFoundError,
    ApprovalResolvedError,
    RunExistsError,
    RunFinishedError,
    RunNotFoundError,
    WaitTimeoutError,
    WorkflowNotFoundError,
    WorkflowRevisionNotFoundError,
)

__all__ = [
    "ApprovalNotFoundError",
    "ApprovalResolvedError",
    "ChainLink",
    "ChildLink",
    "Client",
    "PendingApproval",
    "RunExistsError",
    "RunFinishedError",
    "RunNotFoundError",
    "WaitTimeoutError",
    "WorkflowNotFoundError",
    "WorkflowRevisionNotFoundError",
]
