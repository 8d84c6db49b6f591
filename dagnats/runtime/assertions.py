"""The refusal to run without assertions: they are part of the engine's safety.

A failed assertion stops (parks) one run instead of letting it go on from a broken state, so
the engine, the worker, `dagnats serve` and `dagnats worker` refuse to start under `python -O`
(or `PYTHONOPTIMIZE`), where every `assert` vanishes. Imports only `kernel.errors`.
"""

from __future__ import annotations

from typing import Final

from kernel.errors import DagnatsError

OPTIMIZE_HINT: Final = "run without -O / PYTHONOPTIMIZE"


class AssertionsDisabledError(DagnatsError):
    """Python runs with assertions off (`-O`), so the engine's invariants are unchecked."""

    hint = OPTIMIZE_HINT

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(
            f"{what} refuses to start under python -O: assertions are part of the engine's "
            "safety (a failed one parks a run), and -O removes them"
        )


def require_assertions(what: str, *, enabled: bool = __debug__) -> None:
    """Return when assertions run; else raise.

    Args:
        what: who is starting, for the message (`dagnats serve`, `the engine`, ...).
        enabled: whether assertions run (`__debug__`; a parameter so the refusal is testable).
    Raises:
        AssertionsDisabledError: under `python -O` / `PYTHONOPTIMIZE`.
    """
    if not enabled:
        raise AssertionsDisabledError(what)
