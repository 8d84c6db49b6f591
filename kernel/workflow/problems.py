"""The bounded list of problems a workflow's parsing and checking fill, and `MISSING`.

Every reader and rule of the format adds to one `Problems` (path, shown value, rule) and goes
on, so that every problem is found in one pass, up to `limits.validation_problems_max`. This
module holds only that list; it knows no rule and never raises. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from kernel import limits
from kernel.errors import Problem, show_value


class _Missing:
    """The value of a field the document leaves out (shown as `(missing)` in problems)."""

    def __repr__(self) -> str:
        return "(missing)"


MISSING: Final = _Missing()


class Problems:
    """Problems found so far, in the order found, at most `limits.validation_problems_max`.

    `settled` holds paths already reported by an earlier pass: a problem at one of them, or
    within one (`steps[2]` settles `steps[2].id`), is dropped, because the value there was
    replaced by a default that later rules need not judge.
    """

    def __init__(self, *, settled: frozenset[str] = frozenset()) -> None:
        self.found: list[Problem] = []
        self.settled = settled

    @property
    def full(self) -> bool:
        """Whether the bound is reached (later problems are dropped; callers may stop)."""
        return len(self.found) >= limits.validation_problems_max

    def add(self, path: str, value: object, rule: str) -> None:
        """Record a problem at `path` about `value` (shown by `show_value`)."""
        if not self.full and not self.is_settled(path):
            self.found.append(Problem(path=path, value=show_value(value), rule=rule))

    def add_shown(self, path: str, shown: str, rule: str) -> None:
        """Record a problem whose value is already described as text."""
        if not self.full and not self.is_settled(path):
            self.found.append(Problem(path=path, value=shown, rule=rule))

    def extend(self, problems: Iterable[Problem]) -> None:
        """Record problems found elsewhere (a step type's own validation)."""
        for problem in problems:
            if self.full:
                break
            if not self.is_settled(problem.path):
                self.found.append(problem)

    def is_settled(self, path: str) -> bool:
        """Whether `path`, or a value holding it, was reported by an earlier pass."""
        if not self.settled:
            return False
        for _ in range(path.count(".") + path.count("[") + 1):  # bounded: one cut per part
            if path in self.settled:
                return True
            cut = max(path.rfind("."), path.rfind("["))
            if cut <= 0:
                return False
            path = path[:cut]
        return False
