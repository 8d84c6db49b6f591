"""The wall clock and the seed source of the shell: what stamps `at_ms` and `seed` into commands.

The pure core never reads a clock; the shell (worker, client, projector) calls these and passes
the values in. The simulator replaces them with virtual time and a seeded source.
"""

from __future__ import annotations

import random
import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch (wall clock)."""
    return time.time_ns() // 1_000_000


def new_seed() -> int:
    """A fresh 63-bit seed for a command's jitter."""
    return random.getrandbits(63)
