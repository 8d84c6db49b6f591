"""Shared fixtures: a real nats-server for integration tests (see tests/nats_fixtures.py).

Hypothesis explores new examples on every local run; CI (HYPOTHESIS_PROFILE=ci, set by
.ci/run) derandomizes them so a red CI is reproducible and never a coin toss.
"""

import os

from hypothesis import settings

from tests.fault_support import processes, procs
from tests.nats_fixtures import (
    connection,
    js,
    nats_server,
    nc,
    private_js,
    private_server,
    server_dir,
)

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

__all__ = [
    "connection",
    "js",
    "nats_server",
    "nc",
    "private_js",
    "private_server",
    "processes",
    "procs",
    "server_dir",
]
