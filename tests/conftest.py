"""Shared fixtures: a real nats-server for integration tests (see tests/nats_fixtures.py).

Hypothesis explores new examples on every local run; CI (HYPOTHESIS_PROFILE=ci, set by
.ci/run) derandomizes them so a red CI is reproducible and never a coin toss.
"""

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

import kernel.decide
from tests.advance_check import checked
from tests.fault_support import processes, procs
from tests.nats_fixtures import (
    connection,
    js,
    nats_server,
    nc,
    private_client,
    private_js,
    private_server,
    server_dir,
)

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _advance_sees_every_ready_step() -> Iterator[None]:
    """Every decision made in this process checks that the advance's candidates hold every
    ready step (tests/advance_check.py); engines in child processes are not checked."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kernel.decide, "_touched", checked(kernel.decide._touched))
        yield

__all__ = [
    "connection",
    "js",
    "nats_server",
    "nc",
    "private_client",
    "private_js",
    "private_server",
    "processes",
    "procs",
    "server_dir",
]
