"""Retry backoff with seeded jitter. Pure: the seed comes from the command that failed.

Lost attempts (their worker vanished; kernel.outcome.LOST_KINDS) are not failures: a step's
attempt number counts both, its policy only the failures (`failures`), and lost attempts have
their own bound, `limits.lost_attempts_max`.

A failed attempt `n` (1-based) waits `initial` (fixed), `initial * n` (linear) or
`initial * multiplier ** (n - 1)` (exponential), capped at `max_delay_ms` (or the global
`limits.delay_ms_max`), then spread by `jitter` (a fraction of the delay, up and down).
"""

from __future__ import annotations

from kernel import limits
from kernel.events import ErrorInfo
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


def failures(attempt: int, lost_attempts: int) -> int:
    """The attempts up to and including `attempt` that were not lost: what a retry policy's
    `max_attempts` counts."""
    assert 0 <= lost_attempts < max(attempt, 1), (attempt, lost_attempts)
    assert attempt <= limits.attempt_number_max, attempt
    return attempt - lost_attempts


def may_retry(policy: RetryPolicy, attempt: int, lost_attempts: int) -> bool:
    """Whether a failure of `attempt` leaves room for another under `policy`."""
    assert 1 <= policy.max_attempts <= limits.attempts_max, policy.max_attempts
    return failures(attempt, lost_attempts) < policy.max_attempts


def lost_exhausted(lost_attempts: int) -> bool:
    """Whether a step (or item) that already lost `lost_attempts` attempts may not lose one
    more and run again."""
    assert 0 <= lost_attempts <= limits.lost_attempts_max, lost_attempts
    return lost_attempts >= limits.lost_attempts_max


def lost_error(what: str, attempt: int, message: str) -> ErrorInfo:
    """The error of a lost attempt past the bound: it fails for good, naming the limit."""
    text = (
        f"{what} attempt {attempt} was lost ({message[:512]}) after "
        f"{limits.lost_attempts_max} lost attempts; the bound is lost_attempts_max"
    )
    return ErrorInfo(message=text, kind="lost")
