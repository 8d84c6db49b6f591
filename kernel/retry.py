"""Retry backoff with seeded jitter. Pure: the seed comes from the command that failed.

A failed attempt `n` (1-based) waits `initial` (fixed), `initial * n` (linear) or
`initial * multiplier ** (n - 1)` (exponential), capped at `max_delay_ms` (or the global
`limits.delay_ms_max`), then spread by `jitter` (a fraction of the delay, up and down).
"""

from __future__ import annotations

from kernel import limits
from kernel.workflow import RetryPolicy

_MASK64 = (1 << 64) - 1


def unit_interval(seed: int) -> float:
    """A number in [0, 1) drawn deterministically from `seed` (splitmix64)."""
    z = (seed + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z = z ^ (z >> 31)
    result = z / float(1 << 64)
    assert 0.0 <= result < 1.0
    return result


def backoff_ms(policy: RetryPolicy, failed_attempt: int, seed: int) -> int:
    """Milliseconds to wait before the attempt after `failed_attempt`.

    Args:
        policy: the step's retry policy.
        failed_attempt: the attempt that failed, 1-based.
        seed: the failing command's seed, for jitter.

    Returns:
        A delay in [0, limits.delay_ms_max].
    """
    assert failed_attempt >= 1, f"failed_attempt {failed_attempt} must be >= 1"
    cap = policy.max_delay_ms if policy.max_delay_ms > 0 else limits.delay_ms_max
    cap = min(cap, limits.delay_ms_max)
    initial = float(policy.initial_delay_ms)
    if policy.strategy == "fixed":
        delay = initial
    elif policy.strategy == "linear":
        delay = initial * failed_attempt
    else:
        exponent = min(failed_attempt - 1, 64)  # bounded: the cap is reached long before
        delay = initial * (policy.multiplier**exponent)
    delay = min(delay, float(cap))
    if policy.jitter > 0.0:
        spread = (unit_interval(seed) * 2.0 - 1.0) * policy.jitter
        delay = delay * (1.0 + spread)
    result = max(0, min(int(delay), limits.delay_ms_max))
    assert 0 <= result <= limits.delay_ms_max
    return result
