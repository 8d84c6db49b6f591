"""Hostile inputs at the CLI: unknown ids, bad flags, JSON that would be changed silently.

Each case runs one `dagnats` command in-process (CliRunner, the console script's own code)
against a live serve + worker (tests/hostile_support.py) and asserts the exit code, one
readable `error:` line naming what it must, and no traceback. A healthy run started before the
first case completes after the last one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Final

import pytest

from kernel import limits
from tests.hostile_support import (
    Stack,
    finish_healthy_run,
    one_line_error,
    probe,
    problems_error,
    stack,
)

__all__ = ["stack"]  # the module-scoped fixture

DEEP: Final = limits.json_depth_max + 1
Args = Callable[[Stack], list[str]]


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def fixed(*args: str) -> Args:
    return lambda _stack: list(args)


def with_file(name: str, data: bytes, *before: str, option: str = "--input-file") -> Args:
    def build(stack: Stack) -> list[str]:
        return [*before, option, str(stack.file(name, data))]

    return build


# (id, args, exit code, what the error line must name)
CASES: Final[list[tuple[str, Args, int, tuple[str, ...]]]] = [
    # -- unknown and impossible ids ------------------------------------------------------
    ("run-show-unknown", fixed("run", "show", "nope"), 1, ("run 'nope' does not exist",)),
    ("run-show-dotted-id", fixed("run", "show", "a.b"), 1, ("run_id 'a.b'",)),
    ("run-show-wildcard-id", fixed("run", "show", "a*"), 1, ("run_id 'a*'",)),
    ("run-show-gt-id", fixed("run", "show", ">"), 1, ("run_id '>'",)),
    ("run-show-empty-id", fixed("run", "show", ""), 1, ("run_id ''",)),
    ("run-show-long-id", fixed("run", "show", "x" * 300), 1, ("run_id",)),
    ("run-show-space-id", fixed("run", "show", "a b"), 1, ("run_id 'a b'",)),
    ("run-history-unknown", fixed("run", "history", "nope"), 1, ("has no history",)),
    ("run-history-dotted-id", fixed("run", "history", "a.b"), 1, ("run_id 'a.b'",)),
    ("run-wait-unknown", fixed("run", "wait", "nope"), 1, ("does not exist",)),
    ("run-wait-bad-id", fixed("run", "wait", "a b"), 1, ("run_id 'a b'",)),
    ("run-cancel-unknown", fixed("run", "cancel", "nope"), 1, ("does not exist",)),
    ("run-cancel-finished", fixed("run", "cancel", "done-run"), 1, ("already ended",)),
    ("run-cancel-bad-id", fixed("run", "cancel", "a.*"), 1, ("run_id",)),
    ("run-signal-unknown", fixed("run", "signal", "nope", "go"), 1, ("does not exist",)),
    ("run-signal-finished", fixed("run", "signal", "done-run", "go"), 1, ("already ended",)),
    ("run-signal-bad-id", fixed("run", "signal", "a.b", "go"), 1, ("run_id 'a.b'",)),
    ("run-audit-unknown", fixed("run", "audit", "nope"), 1, ("does not exist",)),
    ("history-export-bad-id", fixed("history", "export", "a.b"), 1, ("run_id 'a.b'",)),
    ("run-start-unknown-workflow", fixed("run", "start", "nope"), 1, ("not registered",)),
    ("run-start-impossible-name", fixed("run", "start", "a*b"), 1, ("not registered",)),
    ("run-start-bad-run-id", fixed("run", "start", "hostile-simple", "--run-id", "a.b"), 1,
     ("run_id 'a.b'",)),
    ("run-start-existing-run-id", fixed("run", "start", "hostile-simple", "--run-id",
     "done-run", "--input", "7"), 1, ("already exists",)),
    ("workflow-show-unknown", fixed("workflow", "show", "nope"), 1, ("not registered",)),
    ("workflow-show-impossible-name", fixed("workflow", "show", "a b*"), 1,
     ("not registered",)),
    ("workflow-show-revision-unknown", fixed("workflow", "show", "hostile-simple",
     "--revision", "99"), 1, ("has no revision 99", "revisions kept: 1")),
    ("workflow-show-revision-negative", fixed("workflow", "show", "hostile-simple",
     "--revision", "-1"), 2, ("--revision -1", "numbered from 1")),
    ("workflow-show-revision-zero", fixed("workflow", "show", "hostile-simple",
     "--revision", "0"), 2, ("--revision 0",)),
    ("workflow-register-missing-file", fixed("workflow", "register", "/nonexistent/w.json"),
     1, ("No such file",)),
    ("workflow-validate-missing-file", fixed("workflow", "validate", "/nonexistent/w.json"),
     1, ("No such file",)),
    ("workflow-register-directory", fixed("workflow", "register", "/"), 1, ("/:",)),
    ("approval-show-unknown-run", fixed("approval", "show", "nope", "gate"), 1,
     ("does not exist",)),
    ("approval-show-unknown-step", fixed("approval", "show", "approval-run", "nogate"), 1,
     ("has no approval 'nogate'",)),
    ("approval-show-bad-run-id", fixed("approval", "show", "a.b", "gate"), 1,
     ("run_id 'a.b'",)),
    ("approval-approve-unknown-run", fixed("approval", "approve", "nope", "gate"), 1,
     ("does not exist",)),
    ("approval-approve-unknown-step", fixed("approval", "approve", "approval-run", "nogate"),
     1, ("nogate",)),
    ("approval-reject-unknown-step", fixed("approval", "reject", "approval-run", "nogate"), 1,
     ("nogate",)),
    ("approval-approve-finished-run", fixed("approval", "approve", "done-run", "one"), 1,
     ("done-run",)),
    ("approval-approve-not-an-approval", fixed("approval", "approve", "signal-run", "hold"),
     1, ("'hold'", "no approval 'hold' waiting")),
    ("event-publish-bad-name", fixed("event", "publish", "bad name!"), 1,
     ("'bad name!'",)),
    ("event-publish-wildcard-name", fixed("event", "publish", "order.*"), 1,
     ("'order.*'",)),
    ("event-publish-empty-name", fixed("event", "publish", ""), 1, ("''",)),
    # -- bad flags -----------------------------------------------------------------------
    ("run-wait-timeout-zero", fixed("run", "wait", "done-run", "--timeout", "0"), 2,
     ("--timeout 0.0", "above 0")),
    ("run-wait-timeout-negative", fixed("run", "wait", "done-run", "--timeout", "-1"), 2,
     ("--timeout -1.0",)),
    ("run-wait-timeout-nan", fixed("run", "wait", "done-run", "--timeout", "nan"), 2,
     ("--timeout nan",)),
    ("run-wait-timeout-inf", fixed("run", "wait", "done-run", "--timeout", "inf"), 2,
     ("--timeout inf",)),
    ("run-start-wait-timeout-zero", fixed("run", "start", "hostile-simple", "--wait",
     "--timeout", "0"), 2, ("--timeout 0.0",)),
    ("run-list-status-bogus", fixed("run", "list", "--status", "bogus"), 2,
     ("--status 'bogus'", "allowed: pending, scheduled, running, compensating, completed")),
    ("run-list-status-empty", fixed("run", "list", "--status", ""), 2, ("--status ''",)),
    ("run-list-status-new", fixed("run", "list", "--status", "new"), 2, ("--status 'new'",)),
    ("run-list-limit-zero", fixed("run", "list", "--limit", "0"), 2, ("--limit 0",)),
    ("run-list-limit-negative", fixed("run", "list", "--limit", "-5"), 2, ("--limit -5",)),
    ("run-list-since-garbage", fixed("run", "list", "--since", "yesterday"), 2,
     ("--since 'yesterday'",)),
    ("query-attach", fixed("query", "ATTACH 'pwned.db' AS p"), 1, ("not authorized",)),
    ("query-pragma-write", fixed("query", "PRAGMA query_only = OFF"), 1,
     ("not authorized",)),
    ("query-pragma-journal", fixed("query", "PRAGMA journal_mode = DELETE"), 1,
     ("not authorized",)),
    ("query-delete", fixed("query", "DELETE FROM runs"), 1, ("not authorized",)),
    ("query-insert", fixed("query", "INSERT INTO runs(run_id) VALUES ('x')"), 1,
     ("not authorized",)),
    ("query-create", fixed("query", "CREATE TABLE t(x)"), 1, ("not authorized",)),
    ("query-drop", fixed("query", "DROP TABLE runs"), 1, ("not authorized",)),
    ("query-vacuum-into", fixed("query", "VACUUM INTO 'copy.db'"), 1, ("query failed",)),
    ("query-syntax", fixed("query", "SELEC 1"), 1, ("query failed", "syntax error")),
    ("query-no-table", fixed("query", "SELECT * FROM nosuch"), 1, ("no such table",)),
    ("query-limit-zero", fixed("query", "SELECT 1", "--limit", "0"), 2, ("--limit 0",)),
    ("query-missing-db", fixed("query", "SELECT 1", "--db", "/nonexistent/x.sqlite"), 1,
     ("does not exist",)),
    ("nats-port-out-of-range", fixed("workflow", "list", "--nats-url",
     "nats://127.0.0.1:99999"), 1, ("cannot connect to NATS",)),
    ("nats-nobody-listens", fixed("run", "show", "x", "--nats-url", "nats://127.0.0.1:1"), 1,
     ("cannot connect to NATS",)),
    ("nats-password-redacted", fixed("workflow", "list", "--nats-url",
     "nats://me:secret@127.0.0.1:1"), 1, ("me:***@",)),
    # -- JSON that would change silently -------------------------------------------------
    ("input-nan", fixed("run", "start", "hostile-simple", "--input", "NaN"), 1,
     ("--input: input: NaN", "NaN and Infinity are refused")),
    ("input-nan-in-object", fixed("run", "start", "hostile-simple", "--input",
     '{"a": NaN}'), 1, ("input.a: NaN",)),
    ("input-infinity", fixed("run", "start", "hostile-simple", "--input",
     '{"a": Infinity}'), 1, ("input.a: Infinity",)),
    ("input-minus-infinity", fixed("run", "start", "hostile-simple", "--input",
     "[1, -Infinity]"), 1, ("input[1]: -Infinity",)),
    ("input-overflowing-float", fixed("run", "start", "hostile-simple", "--input",
     '{"a": {"b": 1e999}}'), 1, ("input.a.b: 1e999",)),
    ("input-duplicate-key", fixed("run", "start", "hostile-simple", "--input",
     '{"a": 1, "a": 2}'), 1, ("input.a is written twice",)),
    ("input-nested-duplicate-key", fixed("run", "start", "hostile-simple", "--input",
     '{"x": [{"k": 1, "k": 2}]}'), 1, ("input.x[0].k is written twice",)),
    ("input-odd-duplicate-key", fixed("run", "start", "hostile-simple", "--input",
     '{"a b": 1, "a b": 2}'), 1, ('input["a b"] is written twice',)),
    ("input-not-json", fixed("run", "start", "hostile-simple", "--input", "{"), 1,
     ("is not valid JSON",)),
    ("input-empty", fixed("run", "start", "hostile-simple", "--input", ""), 1,
     ("is not valid JSON",)),
    ("input-too-deep", fixed("run", "start", "hostile-simple", "--input", deep(DEEP)), 1,
     (f"nests deeper than {limits.json_depth_max}",)),
    ("input-file-100000-deep", with_file("deep.json", deep(100_000).encode(), "run", "start",
     "hostile-simple"), 1, ("nests deeper than",)),
    ("input-file-not-utf8", with_file("latin1.json", b'{"a": "caf\xe9"}', "run", "start",
     "hostile-simple"), 1, ("is not UTF-8 text", "0xe9")),
    ("input-file-nan", with_file("nan.json", b'{"a": [NaN]}', "run", "start",
     "hostile-simple"), 1, ("input.a[0]: NaN",)),
    ("input-file-duplicate", with_file("dup.json", b'{"a": {"b": 1, "b": 2}}', "run", "start",
     "hostile-simple"), 1, ("input.a.b is written twice",)),
    ("input-file-bom", with_file("bom.json", b'\xef\xbb\xbf{"a": 1}', "run", "start",
     "hostile-simple"), 1, ("is not valid JSON",)),
    ("input-file-binary", with_file("binary.json", bytes(range(256)), "run", "start",
     "hostile-simple"), 1, ("input",)),
    ("input-file-missing", fixed("run", "start", "hostile-simple", "--input-file",
     "/nonexistent/in.json"), 1, ("No such file",)),
    ("input-file-directory", fixed("run", "start", "hostile-simple", "--input-file", "/"), 1,
     ("input-file /",)),
    ("input-file-oversized", with_file("huge.json", b" " * (4 * limits.payload_bytes_max + 1),
     "run", "start", "hostile-simple"), 1, ("over the limit",)),
    ("input-over-payload-limit", with_file("big.json",
     b'"' + b"x" * (limits.payload_bytes_max + 1) + b'"', "run", "start", "hostile-simple"),
     1, ("input", str(limits.payload_bytes_max))),
    ("signal-payload-nan", fixed("run", "signal", "signal-run", "other", "--payload",
     '{"a": NaN}'), 1, ("payload.a: NaN",)),
    ("signal-payload-duplicate", fixed("run", "signal", "signal-run", "other", "--payload",
     '{"a": 1, "a": 1}'), 1, ("payload.a is written twice",)),
    ("signal-payload-too-deep", with_file("sdeep.json", deep(DEEP).encode(), "run", "signal",
     "signal-run", "other", option="--payload-file"), 1, ("nests deeper",)),
    ("signal-payload-too-large", with_file("sbig.json",
     b'"' + b"x" * (limits.signal_bytes_max + 1) + b'"', "run", "signal", "signal-run",
     "other", option="--payload-file"), 1, ("signal payload",)),
    ("event-payload-nan", fixed("event", "publish", "order.paid", "--payload",
     '{"total": Infinity}'), 1, ("payload.total: Infinity",)),
    ("event-payload-duplicate", fixed("event", "publish", "order.paid", "--payload",
     '{"id": 1, "id": 2}'), 1, ("payload.id is written twice",)),
    ("event-payload-not-utf8", with_file("enc.json", b'"\xff\xfe"', "event", "publish",
     "order.paid", option="--payload-file"), 1, ("is not UTF-8",)),
    ("event-payload-too-large", with_file("ebig.json",
     b'"' + b"x" * (limits.event_bytes_max + 1) + b'"', "event", "publish", "order.paid",
     option="--payload-file"), 1, ("event",)),
    ("approval-data-nan", fixed("approval", "approve", "approval-run", "gate", "--data",
     '{"a": NaN}'), 1, ("data.a: NaN",)),
    ("approval-data-duplicate", fixed("approval", "approve", "approval-run", "gate", "--data",
     '{"a": 1, "a": 2}'), 1, ("data.a is written twice",)),
    ("approval-data-too-deep", with_file("adeep.json", deep(DEEP).encode(), "approval",
     "reject", "approval-run", "gate", option="--data-file"), 1, ("nests deeper",)),
]


@pytest.mark.parametrize(
    ("args", "code", "needles"),
    [pytest.param(args, code, needles, id=name) for name, args, code, needles in CASES],
)
def test_cli_refuses_with_one_line(
    stack: Stack, args: Args, code: int, needles: tuple[str, ...]
) -> None:
    one_line_error(stack.cli(*args(stack)), code, *needles)


WORKFLOW_FILES: Final = [
    ("nan-in-config", b'{"name": "w", "steps": [{"id": "a", "task": "t", "config": '
     b'{"x": NaN}}]}', ("steps[0].config.x", "NaN")),
    ("infinity-in-metadata", b'{"name": "w", "metadata": {"a": Infinity}, "steps": '
     b'[{"id": "a", "task": "t"}]}', ("metadata.a", "Infinity")),
    ("overflowing-float", b'{"name": "w", "steps": [{"id": "a", "task": "t", "config": '
     b'{"x": -1e400}}]}', ("steps[0].config.x",)),
    ("duplicate-top-key", b'{"name": "w", "name": "v", "steps": [{"id": "a", "task": "t"}]}',
     ("name", "written twice")),
    ("duplicate-step-key", b'{"name": "w", "steps": [{"id": "a", "id": "b", "task": "t"}]}',
     ("steps[0].id", "written twice")),
    ("100000-deep", deep(100_000).encode(), ("nests deeper",)),
    ("too-deep-config", b'{"name": "w", "steps": [{"id": "a", "task": "t", "config": {"x": '
     + deep(DEEP).encode() + b"}}]}", ("nests deeper",)),
    ("not-utf8", b'{"name": "caf\xe9", "steps": [{"id": "a", "task": "t"}]}',
     ("is not UTF-8",)),
    ("not-json", b"{oops", ("is not valid JSON",)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "needles"),
    [pytest.param(data, needles, id=name) for name, data, needles in WORKFLOW_FILES],
)
@pytest.mark.parametrize("verb", ["validate", "register"])
def test_workflow_files_refused_with_their_path(
    stack: Stack, tmp_path: Path, verb: str, data: bytes, needles: tuple[str, ...]
) -> None:
    file = tmp_path / "workflow.json"
    file.write_bytes(data)
    problems_error(stack.cli("workflow", verb, str(file)), *needles)


def test_query_attach_creates_no_file(stack: Stack, tmp_path: Path) -> None:
    target = tmp_path / "created.db"
    result = stack.cli("query", f"ATTACH '{target}' AS p")
    one_line_error(result, 1, "not authorized")
    assert not target.exists()
    rows = stack.cli("query", "SELECT count(*) AS n FROM runs", "--json")
    assert rows.code == 0 and '"n"' in rows.stdout, rows
    info = stack.cli("query", "PRAGMA table_info(runs)", "--json")
    assert info.code == 0 and "run_id" in info.stdout, info


def test_revisions_are_per_workflow(stack: Stack, tmp_path: Path) -> None:
    numbers = []
    for name in ("rev-a", "rev-b", "rev-a", "rev-a"):
        file = tmp_path / f"{name}.json"
        file.write_text(f'{{"name": "{name}", "steps": [{{"id": "one", "task": "fault.work"}}]}}')
        result = stack.cli("workflow", "register", str(file), "--json")
        assert result.code == 0, result
        numbers.append((name, str(json.loads(result.stdout)["revision"])))
    assert numbers == [("rev-a", "1"), ("rev-b", "1"), ("rev-a", "2"), ("rev-a", "3")]
    shown = stack.cli("workflow", "show", "rev-a", "--revision", "1")
    assert shown.code == 0 and "revisions: 1, 2, 3" in shown.stdout, shown
    one_line_error(stack.cli("workflow", "show", "rev-b", "--revision", "2"), 1,
                   "workflow 'rev-b' has no revision 2 (revisions kept: 1)")  # fmt: skip


def test_run_list_with_each_allowed_status_succeeds(stack: Stack) -> None:
    for status in ("running", "completed", "failed", "cancelled"):
        result = stack.cli("run", "list", "--status", status)
        assert result.code == 0 and "Traceback" not in result.stderr, result


def test_zz_engine_still_serves_and_the_healthy_run_completes(stack: Stack) -> None:
    probe(stack)
    finish_healthy_run(stack)
