"""The README's quick start from an installed wheel, outside the source tree (slow, bounded).

Builds the wheel from a copy of the working tree (`pip wheel --no-deps`), installs it with its
dependencies into a fresh venv in a temporary dir, and from another directory runs `dagnats
--version`, `dagnats workflow schema`, `dagnats demo` (the example order workflow end to end:
the examples ship as `dagnats.examples`) and `dagnats demo --copy-to` (the quick start's files,
which `workflow validate` accepts there). Nothing of the source tree is on the path: the venv
is not the project's and the commands run from an empty dir.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

from kernel.workflow.schema import schema_json
from tests.fault_support import REPO_ROOT

build_timeout_s: Final = 300.0
install_timeout_s: Final = 400.0
command_timeout_s: Final = 120.0
COPY_IGNORED: Final = (
    ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache",
    ".ruff_cache", ".pytest_cache", ".hypothesis", "bench", "tests",
)  # fmt: skip


def clean_env() -> dict[str, str]:
    """This environment without the project's venv, PYTHONPATH or DAGNATS_ settings."""
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith("DAGNATS_") and key not in ("PYTHONPATH", "VIRTUAL_ENV")
    }  # fmt: skip
    return env


def check(argv: list[str], cwd: Path, timeout_s: float) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout_s,
        check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, f"{argv} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr, done.stderr
    return done


@pytest.mark.slow
def test_the_quick_start_works_from_an_installed_wheel(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(*COPY_IGNORED))
    assert (source / "dagnats" / "examples").is_symlink()
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    check([*pip, "wheel", str(source), "--no-deps", "-w", str(wheels)], tmp_path, build_timeout_s)
    (wheel,) = wheels.glob("dagnats-*.whl")
    venv = tmp_path / "venv"
    check([sys.executable, "-m", "venv", str(venv)], tmp_path, command_timeout_s)
    check([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
          tmp_path, install_timeout_s)  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dagnats = str(venv / "bin" / "dagnats")

    version = check([dagnats, "--version"], elsewhere, command_timeout_s)
    assert version.stdout.startswith("dagnats ")
    located = check(
        [str(venv / "bin" / "python"), "-c", "import dagnats; print(dagnats.__file__)"],
        elsewhere, command_timeout_s,
    )  # fmt: skip
    assert located.stdout.strip().startswith(str(venv)), "dagnats came from the source tree"
    schema = subprocess.run(
        [dagnats, "workflow", "schema"], cwd=elsewhere, env=clean_env(), capture_output=True,
        timeout=command_timeout_s, check=False,
    )  # fmt: skip
    assert schema.returncode == 0 and schema.stdout == schema_json()

    demo = check([dagnats, "demo"], elsewhere, command_timeout_s)
    assert "run ended as completed" in demo.stdout, demo.stdout[-2_000:]

    copied = check([dagnats, "demo", "--copy-to", "quickstart"], elsewhere, command_timeout_s)
    assert "quickstart/order/workflow.json" in copied.stdout
    assert (elsewhere / "quickstart" / "workflow.schema.json").read_bytes() == schema_json()
    check([dagnats, "workflow", "validate", "quickstart/order/workflow.json"], elsewhere,
          command_timeout_s)  # fmt: skip
