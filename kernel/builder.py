"""Deprecated alias of `kernel.workflow.builder`, kept for one release.

Importing it warns (`DeprecationWarning`) and gives the same names as the new module; new code
writes `from dagnats import Workflow`. Nothing here but the warning and the names. Pure.
"""

from __future__ import annotations

import warnings

from kernel.workflow.builder import Duration, Retry, Skip, Workflow

warnings.warn(
    "kernel.builder is deprecated; use `from dagnats import Workflow`",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["Duration", "Retry", "Skip", "Workflow"]
