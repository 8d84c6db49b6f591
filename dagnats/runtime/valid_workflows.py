"""The workflows of StartRun commands found valid: one validated once, not at each start.

A StartRun carries its whole workflow; the engine sets aside one whose workflow breaks the
typed definition's rules (kernel/workflow `validate_workflow`). Runs of one workflow carry
the same bytes, so a workflow found valid is remembered by a digest of its encoding (at most
`valid_workflows_remembered_max`, the oldest going first) and not validated again.

This module does no I/O.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import msgspec

from dagnats.runtime.settings import valid_workflows_remembered_max
from kernel.commands import StartRun
from kernel.workflow import validate_workflow

_encode_workflow = msgspec.json.Encoder().encode


class ValidWorkflows:
    """The digests of the workflows found valid (bounded, the oldest going first)."""

    def __init__(self) -> None:
        self._digests: OrderedDict[bytes, None] = OrderedDict()

    def problems(self, command: StartRun) -> str:
        """Why a StartRun's workflow is invalid ("" when valid), by the typed definition's
        rules; a workflow found valid before (the same bytes) is not validated again."""
        key = hashlib.blake2b(_encode_workflow(command.workflow), digest_size=16).digest()
        digests = self._digests
        if key in digests:
            digests.move_to_end(key)
            return ""
        problems = validate_workflow(command.workflow)
        if problems:
            return "start_run carries an invalid workflow: " + "; ".join(map(str, problems))
        digests[key] = None
        while len(digests) > valid_workflows_remembered_max:
            digests.popitem(last=False)
        assert len(digests) <= valid_workflows_remembered_max
        return ""

    def __len__(self) -> int:
        return len(self._digests)
