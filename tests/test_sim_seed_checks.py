"""What a seed's checks catch and what makes a seed's history the same wherever it runs:

- a query-tables bug that shows only in a batch larger than the live feed ever takes (the
  batches a rebuild from zero, or a projector catching up on NATS, applies: up to
  `batch_messages_max` messages) is caught by the seeds that rebuild in a database
  (`DATABASE_REBUILD_EVERY_SEEDS`); the rows computed from the folds alone would not;
- a traceback of the project's own code names its file from its module (the editable install
  finds the checkout by a finder hook, not a path entry, and the `dagnats` console script does
  not put it on `sys.path`), so no checkout path goes into history;
- the loop's clock, the one a handler reads, starts again at each seed: a handler timing itself
  gives seed N the same history alone, in a range or in another `--jobs` chunk."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlite_utils import Database

from dagnats.sim import SimCase, run_seed, run_seeds
from dagnats.sim.loop import SimLoop
from dagnats.sim.projector import CATCH_UP_BATCH_MAX, FEED_BATCH_MAX, REDELIVERED_MAX
from dagnats.worker import TaskContext, Worker
from dagnats.worker_safety import portable_paths, short_traceback
from kernel.workflow.builder import Workflow
from projections.sqlite import QueryTables
from tests.sim_mutants import chain_worker, chain_workflow

RUNS: int = 10  # runs per seed: a rebuild's one batch holds ~400 events, a live batch < 200
EVENTS_PER_FLUSH_KEPT: int = 256  # the planted bug drops the events rows of a flush past these


def test_a_bug_of_large_batches_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: a flush writes the events rows in chunks (as for SQLite's variable limit) and
    loses what is past the first chunk. The live feed's batches (at most
    CATCH_UP_BATCH_MAX + REDELIVERED_MAX messages) never reach the chunk; a rebuild from zero's
    do, and so do a NATS projector's (up to `batch_messages_max` messages per batch)."""
    assert max(FEED_BATCH_MAX, CATCH_UP_BATCH_MAX) + REDELIVERED_MAX < 100
    flush = QueryTables.flush
    largest: list[int] = [0]

    def chunked(self: QueryTables, db: Database) -> None:
        largest[0] = max(largest[0], len(self._events))
        del self._events[EVENTS_PER_FLUSH_KEPT:]
        flush(self, db)

    monkeypatch.setattr(QueryTables, "flush", chunked)
    case = SimCase(workflow=chain_workflow(), worker=chain_worker(), runs=RUNS)
    report = run_seeds(case, range(20), failures_max=1)
    assert largest[0] > EVENTS_PER_FLUSH_KEPT, (
        f"no batch was as large as a rebuild's (largest: {largest[0]} events): a projection "
        "that loses rows in large batches goes unseen"
    )
    assert report.failures, "a projection that loses rows in large batches survived 20 seeds"
    broken = {violation.invariant for violation in report.failures[0].violations}
    assert broken == {"projections_equal_rebuild"}, broken


def test_the_projects_own_files_are_named_relative_to_the_checkout_by_the_console_script(
    tmp_path: Path,
) -> None:
    """As `dagnats sim` runs them: `sys.path[0]` is the script's directory, and the checkout
    is found by the editable install's finder, not by a `sys.path` entry."""
    import dagnats

    checkout = str(Path(dagnats.__file__).resolve().parent.parent)
    script = (
        "import sys\n"
        f"sys.path[:] = [p for p in sys.path if p not in ('', {checkout!r})]\n"
        "from dagnats.worker_safety import cut_text, short_traceback\n"
        "try:\n"
        "    cut_text(None)  # raises in dagnats/worker_safety.py\n"
        "except Exception as error:\n"
        "    print(short_traceback(error))\n"
    )
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=environment,
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert "worker_safety.py" in found, found
    assert checkout not in found, f"the checkout's path went into the text: {found}"


def _traceback_of_package(
    monkeypatch: pytest.MonkeyPatch, folder: Path, package: str, entries: list[str]
) -> str:
    """The traceback text of `package.mod.handle` raising, the package made in `folder` and
    imported with `entries` then `folder` on `sys.path`, `folder` taken off it again (as an
    editable install's finder finds a checkout)."""
    import importlib

    (folder / package).mkdir(parents=True)
    (folder / package / "__init__.py").write_text("", encoding="utf-8")
    (folder / package / "mod.py").write_text(
        "def handle(x):\n    raise ValueError(x)\n", encoding="utf-8"
    )
    monkeypatch.setattr(sys, "path", [*entries, str(folder), *sys.path])
    module = importlib.import_module(f"{package}.mod")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(folder)])
    try:
        module.handle("boom")
    except ValueError as error:
        return short_traceback(error)
    finally:
        for name in (f"{package}.mod", package):
            sys.modules.pop(name, None)
    raise AssertionError("nothing was raised")


def test_a_module_found_by_a_finder_is_named_from_its_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package imported from a folder that is then no longer on `sys.path` (as an editable
    install's finder finds it) is named from its module; a file of no module keeps its path."""
    folder = tmp_path / "checkout"
    text = _traceback_of_package(monkeypatch, folder, "revpkg", [])
    assert 'File "revpkg/mod.py", line 2, in handle' in text, text
    assert str(folder) not in text
    outside = f'  File "{folder / "revpkg" / "other.py"}", line 1, in f\n'
    assert portable_paths(outside) == outside


def _timed_worker() -> Worker:
    worker = Worker()

    @worker.task("timed")
    async def timed(context: TaskContext) -> dict[str, object]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(0.3)
        return {"took_s": loop.time() - started}

    return worker


def test_a_seed_of_a_handler_timing_itself_is_the_same_alone_and_after_others() -> None:
    """The loop's clock is the one a handler reads (`loop.time()`): it starts each seed at 0,
    so `--seed N` replays seed N of a range (float sums of another base round otherwise:
    0.9000000000000001 - 0.6000000000000001 != 0.3)."""
    workflow = Workflow("timed").task("a", task="timed").build()
    case = SimCase(workflow=workflow, worker=_timed_worker())
    seeds = range(6)
    in_range: dict[int, str] = {}
    run_seeds(case, seeds, on_result=lambda r: in_range.__setitem__(r.seed, r.digest))
    alone = {seed: run_seed(case, seed, keep_trace=False).digest for seed in seeds}
    assert in_range == alone


def test_dropping_a_runs_timers_sets_the_loop_clock_back() -> None:
    loop = SimLoop()  # type: ignore[abstract]
    try:
        loop.run_until_complete(asyncio.sleep(0.7))
        assert loop.time() == 0.7
        loop.drop_timers()
        assert loop.time() == 0.0
    finally:
        loop.close()


def test_a_module_under_a_parent_folders_entry_is_named_from_its_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the folder holding the checkout on `sys.path` (a script run from there), the
    checkout's own name does not go into the text."""
    folder = tmp_path / "checkout-one"
    text = _traceback_of_package(monkeypatch, folder, "revpkg2", [str(tmp_path)])
    assert 'File "revpkg2/mod.py", line 2, in handle' in text, text
    assert "checkout-one" not in text
