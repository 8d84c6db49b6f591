"""The drain's bound (dagnats/worker_drain.py): checked at the edge (a `Worker` argument, the
`dagnats worker --drain-timeout` option) with an error naming the field, the value and the
rule; and shared in three parts (handlers, results, exit) that fill it exactly."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagnats.worker import Worker
from dagnats.worker_drain import (
    DrainPlan,
    drain_exit_part_ms_max,
    drain_results_part_ms_max,
    drain_timeout_ms_default,
    drain_timeout_ms_max,
    drain_timeout_ms_min,
)
from tests.fault_support import Processes

CLI_TIMEOUT_S = 30.0


@given(
    began=st.floats(min_value=0, max_value=1e9, allow_nan=False),
    timeout_ms=st.integers(min_value=drain_timeout_ms_min, max_value=drain_timeout_ms_max),
)
def test_the_parts_of_a_drain_fill_its_bound_in_order(began: float, timeout_ms: int) -> None:
    plan = DrainPlan.of(began, timeout_ms)
    assert began < plan.handlers_end < plan.results_end < plan.exit_by, plan
    assert math.isclose(plan.exit_by - began, timeout_ms / 1000, abs_tol=1e-6), plan
    results_s, exit_s = plan.results_end - plan.handlers_end, plan.exit_by - plan.results_end
    assert results_s <= drain_results_part_ms_max / 1000 + 1e-6, plan
    assert exit_s <= drain_exit_part_ms_max / 1000 + 1e-6, plan
    assert plan.handlers_end - began >= (timeout_ms / 1000) * 0.6, "handlers get the most"


def test_the_default_fits_a_thirty_second_grace_with_margin() -> None:
    plan = DrainPlan.of(0.0, Worker().drain_timeout_ms)
    assert drain_timeout_ms_default == 25_000
    assert (plan.handlers_end, plan.results_end, plan.exit_by) == (19.0, 24.0, 25.0)


@pytest.mark.parametrize("value", [0, drain_timeout_ms_min - 1, drain_timeout_ms_max + 1])
def test_a_worker_refuses_a_drain_timeout_out_of_range(value: int) -> None:
    rule = rf"drain_timeout_ms {value} must be within {drain_timeout_ms_min}\.\.\d+"
    with pytest.raises(ValueError, match=rule):
        Worker(drain_timeout_ms=value)


@pytest.mark.parametrize("value", ["0.5", "3601", "nan", "inf", "-1"])
def test_the_cli_refuses_a_drain_timeout_out_of_range(procs: Processes, value: str) -> None:
    result = procs.cli(
        "worker", "tests.fault_workers:worker", "--drain-timeout", value, timeout_s=CLI_TIMEOUT_S
    )
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    rule = "it must be within 1..3600 s (from SIGTERM to the exit)"
    assert lines == [f"error: --drain-timeout {float(value):g}: {rule}"], lines


@pytest.mark.parametrize(
    ("attr", "field"), [("short_drain", "drain_timeout_ms 5"), ("no_concurrency", "concurrency 0")]
)
def test_the_cli_refuses_a_module_setting_out_of_range_in_one_line(
    procs: Processes, attr: str, field: str
) -> None:
    spec = f"tests.misconfigured_workers:{attr}"
    result = procs.cli("worker", spec, timeout_s=CLI_TIMEOUT_S)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith(f"error: {spec}: {field}"), lines
    assert lines[1].startswith("hint:"), lines
    assert "Traceback" not in result.stderr
