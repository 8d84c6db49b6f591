"""`dagnats trigger test`: next fire times, and one readable error line for a bad expression."""

from __future__ import annotations

import json
import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "dagnats.cli", "trigger", "test", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_it_prints_the_next_fire_times_in_a_zone() -> None:
    done = run("0 9 * * *", "--count", "3", "--timezone", "Asia/Tokyo", "--json")
    assert done.returncode == 0, done.stderr
    fires = json.loads(done.stdout)["fires"]
    assert len(fires) == 3 and all(fire.endswith("T00:00:00.000Z") for fire in fires)  # UTC+9


def test_a_six_field_expression_is_one_error_line_with_a_hint() -> None:
    done = run("0 0 * * * *")
    assert done.returncode == 1
    assert "has 6 fields" in done.stderr and "hint:" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_zone_names_the_zone() -> None:
    done = run("* * * * *", "--timezone", "Mars/Olympus")
    assert done.returncode == 1 and "'Mars/Olympus'" in done.stderr
