"""The ids of a run's spans, derived from what they are about, and the context variable by
which `tracing` tells the SDK's id generator (`tracing_sdk.DerivedIds`) to use one.

Pure: hashing only.
"""

from __future__ import annotations

import hashlib
from contextvars import ContextVar

# The ids the next span must take (trace id, span id): read by the SDK's id generator that
# `tracing.configure` installs, set only around one synchronous `start_span`.
forced_ids: ContextVar[tuple[int, int] | None] = ContextVar("dagnats_forced_ids", default=None)


def _id(text: str, size: int) -> int:
    value = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=size).digest(), "big")
    return value or 1  # 0 is the invalid id


def trace_id_of(run_id: str) -> int:
    """The trace id of a run (128 bits, derived from its id)."""
    return _id(f"trace:{run_id}", 16)


def run_span_id(run_id: str) -> int:
    """The span id of a run's span."""
    return _id(f"run:{run_id}", 8)


def attempt_span_id(run_id: str, step_id: str, attempt: int) -> int:
    """The span id of a step attempt's span."""
    return _id(f"attempt:{run_id}:{step_id}:{attempt}", 8)
