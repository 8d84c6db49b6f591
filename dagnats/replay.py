"""Offline replay of exported histories: prove that the current code still agrees with them.

`dagnats history export RUN_ID > run.jsonl` writes a run's history messages exactly as stored,
one per line. `replay(path)` audits such a file with no server (`dagnats.audit`): every
line must decode, `decide` on the state before each recorded command must give its recorded
events, and they must fold. In pytest:

```python
from dagnats.testing import replay

def test_recorded_histories_still_replay():
    for path in Path("tests/histories").glob("*.jsonl"):
        replay(path)          # raises HistoryDivergedError naming the first divergence
```
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

from dagnats.audit import AuditReport, Decide, Divergence, audit_history
from kernel.decide import decide
from kernel.errors import DagnatsError

history_file_bytes_max: Final = 1 << 30  # one exported history, read whole


class HistoryDivergedError(DagnatsError, AssertionError):
    """A recorded history no longer agrees with the code (an AssertionError, for pytest)."""

    def __init__(self, path: Path, report: AuditReport) -> None:
        assert report.divergence is not None
        self.path = path
        self.report = report
        self.divergence: Divergence = report.divergence
        super().__init__(f"{path}: {report.summary()}")


def read_history_file(path: Path) -> Iterator[tuple[int, bytes]]:
    """The messages of an exported history as (line number, bytes); blank lines are skipped.

    Raises:
        DagnatsError: the file cannot be read or is over the size bound.
    """
    try:
        size = path.stat().st_size
        if size > history_file_bytes_max:
            raise DagnatsError(f"{path} is {size} bytes; the limit is {history_file_bytes_max}")
        data = path.read_bytes()
    except OSError as error:
        raise DagnatsError(f"{path}: {error.strerror}") from None
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            yield number, line


def run_id_of(path: Path) -> str:
    return path.name.removesuffix(".jsonl")


def audit_file(path: Path, *, decide_function: Decide = decide) -> AuditReport:
    """Audit an exported history file (the position of a message is its line number)."""
    return audit_history(
        run_id_of(path), read_history_file(Path(path)), decide_function=decide_function
    )


def replay(path: str | Path, *, decide_function: Decide = decide) -> AuditReport:
    """Audit an exported history with the current code; raise at the first divergence.

    Args:
        path: a `.jsonl` file written by `dagnats history export`.
        decide_function: the decide to check against (the kernel's by default).
    Returns:
        The report (consistent), with the counts of messages and events checked.
    Raises:
        HistoryDivergedError: the first divergence: its line, command, recorded vs now.
        DagnatsError: the file cannot be read.
    """
    report = audit_file(Path(path), decide_function=decide_function)
    if report.divergence is not None:
        raise HistoryDivergedError(Path(path), report)
    if report.messages == 0:
        raise DagnatsError(f"{path}: no history messages (is it a `dagnats history export`?)")
    return report
