"""What the README promises of the `dagnats` command: `--version`, shell completion, and
`--data-dir` (or `$DAGNATS_DATA_DIR`) on every command that touches NATS or the data dir.

Real subprocesses for exit codes and output; one real serve (tests/fault_support.py) for
`--data-dir` finding it while `$DAGNATS_DATA_DIR` names another dir.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import typer

from dagnats.cli import OFFLINE_COMMANDS, app
from tests.fault_support import Processes, dagnats_command


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*dagnats_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=60,
        check=False, env=env,
    )  # fmt: skip


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    done = run("--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"dagnats {importlib.metadata.version('dagnats')}"


def test_shell_completion_is_offered_and_shows_a_script(tmp_path: Path) -> None:
    helped = run("--help", cwd=tmp_path)
    assert "--install-completion" in helped.stdout and "--show-completion" in helped.stdout
    # Typer finds the shell from the parent processes (under `make`, /bin/sh, which it does
    # not support); its own switch takes the shell named on the command line instead.
    named = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    shown = run("--show-completion", "bash", cwd=tmp_path, env=named)
    assert shown.returncode == 0, shown.stderr
    assert "_DAGNATS_COMPLETE" in shown.stdout and "complete" in shown.stdout


def commands(typer_app: typer.Typer, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for info in typer_app.registered_commands:
        assert info.callback is not None
        name = info.name or info.callback.__name__.replace("_", "-")
        yield (*path, name)
    for group in typer_app.registered_groups:
        assert group.typer_instance is not None and group.name is not None
        yield from commands(group.typer_instance, (*path, group.name))


def callbacks(typer_app: typer.Typer) -> Iterator[object]:
    for info in typer_app.registered_commands:
        yield info.callback
    for group in typer_app.registered_groups:
        assert group.typer_instance is not None
        yield from callbacks(group.typer_instance)


def test_every_command_but_the_offline_ones_takes_data_dir(tmp_path: Path) -> None:
    with_option = [
        callback for callback in callbacks(app)
        if "data_dir" in inspect.signature(callback).parameters  # type: ignore[arg-type]
    ]  # fmt: skip
    all_callbacks = list(callbacks(app))
    assert len(all_callbacks) >= 25
    assert len(with_option) == len(all_callbacks) - len(OFFLINE_COMMANDS)
    for path in [("run", "show"), ("worker",), ("approval", "list"), ("event", "publish")]:
        helped = run(*path, "--help", cwd=tmp_path)
        assert "--data-dir" in helped.stdout and "DAGNATS_DATA_DIR" in helped.stdout, path
    assert "--data-dir" not in run("workflow", "validate", "--help", cwd=tmp_path).stdout


async def test_data_dir_on_a_command_finds_the_serve_of_that_dir(procs: Processes) -> None:
    data_dir = procs.tmp_path / "elsewhere"
    await procs.serve(data_dir)
    procs.data_dir = procs.tmp_path / "default-data-dir"  # the CLI's env names another dir
    without = procs.cli("workflow", "list")
    assert without.returncode == 1 and "Traceback" not in without.stderr
    for args in (("workflow", "list"), ("run", "show", "nosuchrun"), ("approval", "list")):
        found = procs.cli(*args, "--data-dir", str(data_dir))
        assert "Traceback" not in found.stderr, found.stderr
        assert "cannot connect" not in found.stderr and "no NATS" not in found.stderr, args
    shown = procs.cli("run", "show", "nosuchrun", "--data-dir", str(data_dir))
    assert shown.returncode == 1 and "does not exist" in shown.stderr
