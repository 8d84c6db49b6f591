"""The rules of roles without a server: which command types each subject kind carries, the
approval identity stamp, the permission blocks, and how credentials are made and found."""

from __future__ import annotations

import stat
from pathlib import Path

import msgspec
import pytest

from dagnats.runtime import credentials
from dagnats.runtime.credentials import CredentialError
from dagnats.runtime.resources import command_subject
from dagnats.runtime.roles import (
    authorize_command,
    permissions,
    run_id_of_command_subject,
    split_command_subject,
)
from kernel.commands import CancelRun, CompleteTask, FireTimer, ResolveApproval

COMPLETE = CompleteTask(
    run_id="r1", at_ms=1, seed=1, step_id="s", attempt=1, output=msgspec.Raw(b"1")
)
APPROVE = ResolveApproval(run_id="r1", at_ms=1, seed=1, step_id="g", decision="approve", by="x")
CANCEL = CancelRun(run_id="r1", at_ms=1, seed=1)


def test_command_subjects_split_into_run_kind_and_identity() -> None:
    assert split_command_subject(command_subject("r1")) == ("r1", "legacy", "")
    assert split_command_subject(command_subject("r1", kind="result")) == ("r1", "result", "")
    assert split_command_subject(command_subject("r1", kind="decision.ann")) == (
        "r1", "decision", "ann",
    )  # fmt: skip
    assert split_command_subject(command_subject("r1", kind="bogus")) == ("r1", "", "")
    assert run_id_of_command_subject(command_subject("r1", kind="client")) == "r1"


def test_each_kind_carries_only_its_command_types() -> None:
    result, client = command_subject("r1", kind="result"), command_subject("r1", kind="client")
    assert authorize_command(result, COMPLETE) == COMPLETE
    refused = authorize_command(client, COMPLETE)
    assert isinstance(refused, str) and "CompleteTask is not a client command" in refused
    assert isinstance(authorize_command(result, CANCEL), str)
    assert isinstance(authorize_command(result, APPROVE), str)
    fire = FireTimer(run_id="r1", at_ms=1, seed=1, timer_id="t", kind="step")
    assert isinstance(authorize_command(client, fire), str)  # only the engine fires timers
    for anything in (COMPLETE, CANCEL, APPROVE, fire):  # engine kind and the old layout
        assert authorize_command(command_subject("r1", kind="engine"), anything) == anything
        assert authorize_command(command_subject("r1"), anything) == anything


def test_an_approval_is_stamped_with_its_subjects_identity() -> None:
    stamped = authorize_command(command_subject("r1", kind="decision.ann"), APPROVE)
    assert isinstance(stamped, ResolveApproval) and stamped.by == "ann"


def test_a_command_for_another_run_or_fired_by_a_foreign_schedule_is_refused() -> None:
    other = authorize_command(command_subject("r2", kind="result"), COMPLETE)
    assert isinstance(other, str) and "arrived on" in other
    subject = command_subject("r1", kind="result")
    forged = authorize_command(subject, COMPLETE, scheduler=command_subject("r1", kind="client"))
    assert isinstance(forged, str) and "only timers may schedule" in forged
    assert authorize_command(subject, COMPLETE, scheduler="dagnats.sched.r1.t") == COMPLETE


def test_permission_blocks_keep_roles_apart() -> None:
    worker = permissions("worker", "worker")
    assert "dagnats.cmd.*.*.result" in worker.publish_allow
    assert not any(rule.startswith("dagnats.history") for rule in worker.publish_allow)
    approver = permissions("approver", "approver-ann", "ann")
    assert "dagnats.cmd.*.*.decision.ann" in approver.publish_allow
    assert "_INBOX_approver-ann.>" in approver.subscribe_allow
    engine = permissions("engine", "engine")
    assert "$JS.API.STREAM.DELETE.>" in engine.publish_deny
    assert permissions("admin", "admin").publish_deny == ()


def test_credentials_are_generated_once_private_and_kept(tmp_path: Path) -> None:
    first = credentials.ensure_credentials(tmp_path)
    assert sorted(first) == ["admin", "approver", "client", "engine", "worker"]
    assert first["approver"].identity == credentials.default_approver_identity()
    assert len({c.password for c in first.values()}) == 5
    directory = tmp_path / "credentials"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in directory.iterdir())
    assert credentials.ensure_credentials(tmp_path) == first
    path = credentials.add_approver(tmp_path, "ann")
    assert credentials.read_credential(path).identity == "ann"
    with pytest.raises(CredentialError, match="exists already"):
        credentials.add_approver(tmp_path, "ann")
    with pytest.raises(CredentialError, match=r"must be 1\.\.64 characters"):
        credentials.add_approver(tmp_path, "ann.*")
    assert "approver-ann" in credentials.ensure_credentials(tmp_path)


def test_a_bad_credential_file_is_one_clear_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.json"
    garbage.write_text("not json")
    with pytest.raises(CredentialError, match="is not a DagNats credential"):
        credentials.read_credential(garbage)
    with pytest.raises(CredentialError, match="cannot be read"):
        credentials.read_credential(tmp_path / "missing.json")


def test_a_connection_finds_its_roles_credential_but_never_sends_it_elsewhere(
    tmp_path: Path,
) -> None:
    made = credentials.ensure_credentials(tmp_path)
    local = credentials.local_data_dir("nats://127.0.0.1:4222", None, tmp_path)
    options = credentials.connect_options("nats://127.0.0.1:4222", role="worker", data_dir=local)
    assert options["user"] == "worker" and options["password"] == made["worker"].password
    assert options["inbox_prefix"] == "_INBOX_worker"
    remote = credentials.local_data_dir("nats://nats.example.com:4222", None, tmp_path)
    assert remote is None
    assert credentials.connect_options("nats://nats.example.com:4222", role="worker",
                                       data_dir=remote) == {}  # fmt: skip
    in_url = credentials.connect_options("nats://u:p@127.0.0.1:4222", role="worker",
                                         data_dir=local)  # fmt: skip
    assert "password" not in in_url  # nats-py takes user and password from the URL
    explicit = credentials.connect_options(
        "nats://nats.example.com:4222", role="client", data_dir=None,
        creds=tmp_path / "credentials" / "approver.json",
    )  # fmt: skip
    assert explicit["user"] == "approver"  # the file's own role, whatever was asked
    with pytest.raises(CredentialError, match="go together"):
        credentials.TlsFiles(cert=str(tmp_path / "c.pem")).context()
