"""Rate-limited logging of something that keeps failing (a NATS connection, a fetch loop).

While NATS is unreachable the client retries every 100 ms; logging each failure buried the
log (124 lines in 12 s). `OutageLog` writes one line when the failing starts, one summary
line every `settings.outage_log_interval_ms` while it goes on (the failures counted and the
last error), and one line when it works again.

This module may log; it does no other I/O and keeps no state beyond its counters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from dagnats.runtime import settings


class OutageLog:
    """The log lines of one thing that may fail for a while (`what`: "nats connection to X")."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        interval_ms: int = settings.outage_log_interval_ms,
        clock: Callable[[], float] = time.monotonic,
        quiet_failures: int = 0,
    ) -> None:
        """`quiet_failures`: failures in a row that go unlogged (a one-off that the next
        try fixes is no outage); a recovery is logged only after a logged failure."""
        assert interval_ms > 0, f"interval_ms {interval_ms} must be > 0"
        assert quiet_failures >= 0, f"quiet_failures {quiet_failures} must be >= 0"
        self.quiet_failures = quiet_failures
        self._announced = False
        self.logger = logger
        self.what = what
        self.interval_s = interval_ms / 1000
        self.clock = clock
        self.down_since: float | None = None
        self.failures = 0
        self.last_error = ""
        self._last_line_at = 0.0

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, error: object) -> None:
        """One more failure: a line if it is the first, or if the last line is old enough."""
        now = self.clock()
        self.failures += 1
        self.last_error = str(error) or type(error).__name__
        if self.down_since is None:
            self.down_since = now
        if not self._announced:
            if self.failures > self.quiet_failures:
                self._announced = True
                self._last_line_at = now
                self.logger.warning("%s: failing (%s)", self.what, self.last_error)
            return
        if now - self._last_line_at >= self.interval_s:
            self._last_line_at = now
            self.logger.warning(
                "%s: still failing after %.0f s (%d failures; last: %s)",
                self.what, now - self.down_since, self.failures, self.last_error,
            )  # fmt: skip
        assert self.failures >= 1

    def recovered(self) -> None:
        """It works again: one line if it was failing, then the counters start over."""
        if self.down_since is None:
            return
        if not self._announced:
            self.down_since = None
            self.failures = 0
            return
        self._announced = False
        self.logger.info(
            "%s: works again after %.1f s (%d failures)",
            self.what, self.clock() - self.down_since, self.failures,
        )  # fmt: skip
        self.down_since = None
        self.failures = 0
        self.last_error = ""
