"""The embedded nats-server's Go runtime settings: GOMAXPROCS in the child's environment.

The rule (`nats_server.server_environment`) is checked on its own, then on real children: an
`EmbeddedNats` and `dagnats serve`'s, reading `/proc/<child pid>/environ`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dagnats.runtime import settings
from dagnats.runtime.nats_server import (
    GOMAXPROCS_ENV,
    EmbeddedNats,
    NatsServerError,
    gomaxprocs_default,
    server_environment,
    usable_cpu_count,
)
from tests.fault_support import Processes

OVERRIDE = settings.server_gomaxprocs_env
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def child_environment(pid: int) -> dict[str, str]:
    """The environment a process was started with (Linux: /proc/<pid>/environ)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (entry.partition(b"=") for entry in raw.split(b"\0") if entry)
    return {name.decode(): value.decode() for name, _, value in pairs}


@given(st.one_of(st.none(), st.integers(min_value=1, max_value=4_096)))
def test_the_default_is_half_the_cpus_and_at_least_one(cpus: int | None) -> None:
    procs = gomaxprocs_default(cpus)
    assert procs >= 1
    if cpus is not None:
        assert procs <= cpus
        assert procs == max(1, cpus // settings.server_gomaxprocs_cpu_divisor)
    environment = server_environment({"PATH": "/bin"}, cpus)
    assert environment == {"PATH": "/bin", GOMAXPROCS_ENV: str(procs)}


@given(st.text(alphabet="0123456789", min_size=1, max_size=3), st.integers(1, 64))
def test_a_users_gomaxprocs_is_passed_on_untouched(value: str, cpus: int) -> None:
    environment = {GOMAXPROCS_ENV: value, OVERRIDE: "7"}
    assert server_environment(environment, cpus)[GOMAXPROCS_ENV] == value


def test_the_override_sets_it_and_zero_leaves_gos_default() -> None:
    assert server_environment({OVERRIDE: "3"}, 2)[GOMAXPROCS_ENV] == "3"
    assert server_environment({OVERRIDE: " 2 "}, 8)[GOMAXPROCS_ENV] == "2"
    assert GOMAXPROCS_ENV not in server_environment({OVERRIDE: "0"}, 8)


@pytest.mark.parametrize("bad", ["", "two", "-1", "1.5", str(settings.server_gomaxprocs_max + 1)])
def test_a_bad_override_names_the_variable_its_value_and_the_rule(bad: str) -> None:
    with pytest.raises(NatsServerError) as caught:
        server_environment({OVERRIDE: bad}, 2)
    message = str(caught.value)
    assert OVERRIDE in message and repr(bad) in message
    assert f"0..{settings.server_gomaxprocs_max}" in message
    assert "\n" not in message and caught.value.hint


@linux_only
async def test_the_child_gets_the_default_and_a_users_value_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(GOMAXPROCS_ENV, raising=False)
    monkeypatch.delenv(OVERRIDE, raising=False)
    expected = str(gomaxprocs_default(usable_cpu_count()))
    cases: list[tuple[dict[str, str], str | None]] = [
        ({}, expected),
        ({GOMAXPROCS_ENV: "3"}, "3"),
        ({OVERRIDE: "5"}, "5"),
        ({OVERRIDE: "0"}, None),
    ]
    for setting, wanted in cases:
        for name in (GOMAXPROCS_ENV, OVERRIDE):
            monkeypatch.delenv(name, raising=False)
        for name, value in setting.items():
            monkeypatch.setenv(name, value)
        server = EmbeddedNats(tmp_path / "data")
        await server.start()
        try:
            assert server.pid is not None
            assert child_environment(server.pid).get(GOMAXPROCS_ENV) == wanted, setting
        finally:
            await server.stop()


async def test_a_bad_override_fails_the_start_and_leaves_the_data_dir_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(GOMAXPROCS_ENV, raising=False)
    monkeypatch.setenv(OVERRIDE, "many")
    server = EmbeddedNats(tmp_path / "data")
    with pytest.raises(NatsServerError, match=OVERRIDE):
        await server.start()
    assert not server.is_running()
    monkeypatch.setenv(OVERRIDE, "1")
    async with EmbeddedNats(tmp_path / "data") as again:  # no lock was left behind
        assert again.is_running()


@linux_only
async def test_serves_nats_server_child_gets_the_default(
    procs: Processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(GOMAXPROCS_ENV, raising=False)  # serve's environment: none set
    serve = await procs.serve(tmp_path / "data", http=None)
    expected = str(gomaxprocs_default(usable_cpu_count()))
    assert child_environment(serve.nats_pid()).get(GOMAXPROCS_ENV) == expected


async def test_serve_refuses_a_bad_override_in_one_line_with_a_hint(
    procs: Processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(GOMAXPROCS_ENV, raising=False)
    procs.extra_env = {OVERRIDE: "many"}
    result = procs.cli("serve", "--data-dir", str(tmp_path / "data"), "--no-http")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[0].lower().startswith("error: ") and f"{OVERRIDE}='many'" in lines[0], lines
    assert any(line.startswith("hint: ") for line in lines[1:]), lines
