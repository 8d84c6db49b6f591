"""What the peers' child processes of `python -m bench.peers` share (`bench.peers_langgraph`,
`bench.peers_dbos`): arguments, the skipped line when a peer is not installed, the JSON lines
they print, and their own CPU per step (from /proc/self/stat).

Writes only inside the directory it is given.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bench.metrics import cpu_ms

REACHED_FILE: Final = "reached"
ACTIONS: Final = ("workloads", "resume-start", "resume-finish")


@dataclass(frozen=True)
class Args:
    action: str
    directory: Path


def say(line: dict[str, object]) -> None:
    print(json.dumps(line, separators=(",", ":")), flush=True)


def reached(directory: Path) -> None:
    """Tell the bench (a file) that the blocking step runs."""
    (directory / REACHED_FILE).touch()


@contextlib.contextmanager
def cpu_per_step(steps: int) -> Iterator[dict[str, object]]:
    """Fills the yielded dict with `cpu_ms_per_step` of this process over the block."""
    line: dict[str, object] = {}
    before = cpu_ms(os.getpid())
    yield line
    ms = round((cpu_ms(os.getpid()) - before) / steps, 4)
    line["cpu_ms_per_step"] = {"process": ms, "total": ms}


def child_main(peer: str, modules: Sequence[str], run: Callable[[Args], None]) -> int:
    """Parse `ACTION --dir DIR`; print a skipped line when a module of the peer is missing."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.peers_{peer}")
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("--dir", type=Path, required=True)
    arguments = parser.parse_args()
    missing = [name for name in modules if not _importable(name)]
    if missing:
        say({"kind": "skipped", "peer": peer, "reason": f"not installed: {', '.join(missing)}"})
        return 0
    run(Args(arguments.action, arguments.dir))
    return 0


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
