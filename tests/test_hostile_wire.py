"""Hostile inputs on the wire and through the Python client, against a live serve + worker.

Raw garbage and forged messages are published on every subject DagNats uses (commands,
tasks, history, schedules, events, approval notices) and written into its KV buckets; after
each, the engine and the worker must still serve (a fresh run completes). Garbage appended to
one run's history makes the CLI answer one line for that run while other runs go on. The
Client refuses values JSON would change (NaN, Infinity, bytes, too deep) with
`JsonInputError`, and bad wait timeouts and revisions by name. A few CLI cases run as real
subprocesses. A healthy run started before the first case completes after the last one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient

from dagnats.client import Client, WorkflowRevisionNotFoundError
from dagnats.json_input import JsonInputError
from dagnats.runtime import credentials
from dagnats.runtime.resources import (
    PROJECTIONS_BUCKET,
    RUNS_BUCKET,
    WORKFLOWS_BUCKET,
    StoredWorkflowError,
    command_subject,
    history_subject,
)
from kernel import limits
from kernel.errors import DagnatsError, PayloadTooLargeError
from tests.hostile_support import (
    Result,
    Stack,
    finish_healthy_run,
    one_line_error,
    probe,
    stack,
)

__all__ = ["stack"]  # the module-scoped fixture

DEEP: Final = limits.json_depth_max + 1


def nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


async def admin_connect(stack: Stack) -> NatsClient:
    """A raw NATS connection with the admin credential: the most a local process holding a
    credential could do, so what is tested is the engine's own handling of what arrives (a
    process without a credential is refused at connect: see the test below)."""
    options = credentials.connect_options(stack.url, role="admin", data_dir=stack.data_dir)
    options.pop("credential", None)
    return await nats.connect(stack.url, **options)


async def publish_js(stack: Stack, subject: str, data: bytes, **headers: str) -> None:
    """Publish to a JetStream subject as an admin could (the server may still refuse)."""
    nc = await admin_connect(stack)
    try:
        js = nc.jetstream()
        with contextlib.suppress(nats.errors.Error):  # refused by the server: also fine
            await js.publish(subject, data, headers=headers or None)
    finally:
        await nc.close()


async def publish_core(stack: Stack, subject: str, data: bytes) -> None:
    nc = await admin_connect(stack)
    try:
        await nc.publish(subject, data)
        await nc.flush()
    finally:
        await nc.close()


async def kv_put(stack: Stack, bucket: str, key: str, data: bytes) -> None:
    nc = await admin_connect(stack)
    try:
        kv = await nc.jetstream().key_value(bucket)
        await kv.put(key, data)
    finally:
        await nc.close()


GARBAGE: Final = b"\x00\xffnot json at all{{{"
DEEP_JSON: Final = b"[" * 100_000 + b"]" * 100_000
Publish = Callable[[Stack], Coroutine[Any, Any, None]]

WIRE_CASES: Final[list[tuple[str, Publish]]] = [
    ("cmd-garbage-new-run", lambda s: publish_js(s, command_subject("wire-x1"), GARBAGE)),
    ("cmd-garbage-live-run", lambda s: publish_js(s, command_subject("signal-run"), GARBAGE)),
    ("cmd-deep-json", lambda s: publish_js(s, command_subject("wire-x2"), DEEP_JSON)),
    ("cmd-empty", lambda s: publish_js(s, command_subject("wire-x3"), b"")),
    ("cmd-json-null", lambda s: publish_js(s, command_subject("wire-x4"), b"null")),
    ("cmd-unknown-type", lambda s: publish_js(
        s, command_subject("wire-x5"), b'{"type": "run.explode", "run_id": "wire-x5"}')),
    ("cmd-forged-complete-unknown-run", lambda s: publish_js(
        s, command_subject("wire-x6"),
        b'{"type": "complete_task", "run_id": "wire-x6", "at_ms": 1, "step_id": "one",'
        b' "attempt": 1, "output": {"forged": true}}')),
    ("cmd-forged-complete-finished-run", lambda s: publish_js(
        s, command_subject("done-run"),
        b'{"type": "complete_task", "run_id": "done-run", "at_ms": 1, "step_id": "one",'
        b' "attempt": 7, "output": 1}')),
    ("cmd-oversized", lambda s: publish_js(s, command_subject("wire-x7"), b"x" * 3_000_000)),
    ("cmd-odd-subject", lambda s: publish_js(s, "dagnats.cmd.999.wire-x8", GARBAGE)),
    ("task-garbage", lambda s: publish_js(s, "dagnats.task.fault.work", GARBAGE)),
    ("task-deep-json", lambda s: publish_js(s, "dagnats.task.fault.work", DEEP_JSON)),
    ("task-forged-json", lambda s: publish_js(
        s, "dagnats.task.fault.work", b'{"run_id": "nope", "step_id": "x", "attempt": -1}')),
    ("task-unknown-type", lambda s: publish_js(s, "dagnats.task.nobody.serves", GARBAGE)),
    ("history-garbage-new-run", lambda s: publish_js(s, history_subject("wire-h1"), GARBAGE)),
    ("history-forged-completed", lambda s: publish_js(
        s, history_subject("wire-h2"),
        b'{"command": {"type": "cancel_run", "run_id": "wire-h2", "at_ms": 1},'
        b' "events": [{"type": "run.completed", "v": 1, "at_ms": 1, "output": null}]}')),
    ("sched-garbage", lambda s: publish_js(s, "dagnats.sched.wire-s1.t1", GARBAGE)),
    ("sched-bad-schedule-header", lambda s: publish_js(
        s, "dagnats.sched.wire-s2.t1", GARBAGE, **{"Nats-Schedule": "@at never"})),
    ("event-garbage", lambda s: publish_js(s, "dagnats.event.order.paid", GARBAGE)),
    ("event-deep-json", lambda s: publish_js(s, "dagnats.event.order.paid", DEEP_JSON)),
    ("approval-notice-garbage", lambda s: publish_core(s, "dagnats.approval.x.gate", GARBAGE)),
    ("dead-garbage", lambda s: publish_js(s, "dagnats.dead.command", GARBAGE)),
    ("kv-runs-garbage-snapshot", lambda s: kv_put(s, RUNS_BUCKET, "wire-k1", GARBAGE)),
    ("kv-projections-garbage", lambda s: kv_put(s, PROJECTIONS_BUCKET, "snapshots", GARBAGE)),
    ("kv-workflows-garbage", lambda s: kv_put(s, WORKFLOWS_BUCKET, "wire-garbage", GARBAGE)),
]  # fmt: skip


@pytest.mark.parametrize(
    "publish", [pytest.param(publish, id=name) for name, publish in WIRE_CASES]
)
def test_garbage_on_the_wire_leaves_the_engine_serving(stack: Stack, publish: Publish) -> None:
    asyncio.run(publish(stack))
    probe(stack)


def test_garbage_appended_to_a_history_answers_one_line_and_others_go_on(
    stack: Stack,
) -> None:
    async def setup(client: Client) -> None:
        await client.start("hostile-signal", None, run_id="poison-run")
        await publish_js(stack, history_subject("poison-run"), GARBAGE)

    stack.run(setup)
    for args in (
        ("run", "show", "poison-run"),
        ("run", "history", "poison-run"),
        ("run", "signal", "poison-run", "go"),
        ("run", "cancel", "poison-run"),
        ("approval", "show", "poison-run", "hold"),
    ):
        one_line_error(stack.cli(*args), 1, "run 'poison-run' is parked", "does not decode")
    probe(stack)


def test_a_garbage_workflow_entry_is_one_line_and_never_crashes_the_engine(
    stack: Stack,
) -> None:
    asyncio.run(kv_put(stack, WORKFLOWS_BUCKET, "garbage-flow", GARBAGE))
    one_line_error(stack.cli("workflow", "show", "garbage-flow"), 1,
                   "workflow 'garbage-flow'", "is not a workflow definition")  # fmt: skip
    one_line_error(stack.cli("run", "start", "garbage-flow"), 1, "is not a workflow definition")
    listed = stack.cli("workflow", "list")
    assert listed.code == 0 and "garbage-flow" in listed.stdout, listed

    async def read(client: Client) -> None:
        with pytest.raises(StoredWorkflowError, match="garbage-flow"):
            await client.get_workflow("garbage-flow")

    stack.run(read)
    probe(stack)


CLIENT_CASES: Final[list[tuple[str, Callable[[Client], Awaitable[Any]], type, str]]] = [
    ("start-nan", lambda c: c.start("hostile-simple", {"a": float("nan")}), JsonInputError,
     "input.a: nan"),
    ("start-inf", lambda c: c.start("hostile-simple", [float("inf")]), JsonInputError,
     r"input\[0\]: inf"),
    ("start-bytes", lambda c: c.start("hostile-simple", {"b": b"\x00"}), JsonInputError,
     "input.b is bytes"),
    ("start-too-deep", lambda c: c.start("hostile-simple", nested(DEEP)), JsonInputError,
     "nests deeper"),
    ("start-too-large", lambda c: c.start("hostile-simple", "x" * limits.payload_bytes_max),
     PayloadTooLargeError, "input"),
    ("start-bad-run-id", lambda c: c.start("hostile-simple", None, run_id="a.>"),
     DagnatsError, "run_id 'a.>'"),
    ("signal-nan", lambda c: c.signal("signal-run", "x", {"a": float("-inf")}),
     JsonInputError, "signal payload.a: -inf"),
    ("event-nan", lambda c: c.publish_event("order.paid", {"a": float("nan")}),
     JsonInputError, "event payload.a"),
    ("event-bytes", lambda c: c.publish_event("order.paid", b"raw"), JsonInputError,
     "event payload is bytes"),
    ("approve-nan", lambda c: c.approve("approval-run", "gate", data=[float("nan")]),
     JsonInputError, r"approval data\[0\]"),
    ("wait-timeout-zero", lambda c: c.wait("done-run", timeout_s=0), DagnatsError,
     "timeout_s 0"),
    ("wait-timeout-negative", lambda c: c.wait("done-run", timeout_s=-1), DagnatsError,
     "timeout_s -1"),
    ("wait-timeout-nan", lambda c: c.wait("done-run", timeout_s=float("nan")), DagnatsError,
     "timeout_s nan"),
    ("revision-zero", lambda c: c.get_workflow("hostile-simple", 0),
     WorkflowRevisionNotFoundError, "numbered from 1"),
    ("revision-missing", lambda c: c.get_workflow("hostile-simple", 5),
     WorkflowRevisionNotFoundError, "has no revision 5"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [pytest.param(call, error, match, id=name) for name, call, error, match in CLIENT_CASES],
)
def test_client_refuses_by_name(
    stack: Stack, call: Callable[[Client], Awaitable[Any]], error: type, match: str
) -> None:
    async def action(client: Client) -> None:
        with pytest.raises(error, match=match) as caught:
            await call(client)
        assert "\n" not in str(caught.value)

    stack.run(action)


SUBPROCESS_CASES: Final = [
    ("revision-negative", ("workflow", "show", "hostile-simple", "--revision", "-1"), 2,
     "--revision -1"),
    ("wait-timeout-nan", ("run", "wait", "done-run", "--timeout", "nan"), 2, "--timeout nan"),
    ("status-bogus", ("run", "list", "--status", "bogus"), 2, "allowed:"),
    ("input-nan", ("run", "start", "hostile-simple", "--input", '{"a": NaN}'), 1,
     "input.a: NaN"),
    ("input-too-deep", ("run", "start", "hostile-simple", "--input", "[" * 100 + "]" * 100),
     1, "nests deeper"),
    ("unknown-run", ("run", "show", "nope"), 1, "does not exist"),
    ("unknown-approval", ("approval", "approve", "approval-run", "nogate"), 1, "nogate"),
    ("query-attach", ("query", "ATTACH 'x.db' AS x"), 1, "not authorized"),
    ("serve-port-out-of-range", ("serve", "--nats-port", "99999"), 2, "--nats-port 99999"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [pytest.param(args, code, needle, id=name) for name, args, code, needle in SUBPROCESS_CASES],
)
def test_real_cli_process_refuses_with_one_line(
    stack: Stack, args: tuple[str, ...], code: int, needle: str
) -> None:
    if args[0] == "query":
        args = (*args, "--data-dir", str(stack.data_dir))
        result = stack.procs.cli(*args)
        one_line_error(Result(result.returncode, result.stdout, result.stderr), code, needle)
        return
    one_line_error(stack.cli_process(*args), code, needle)


def test_zz_engine_still_serves_and_the_healthy_run_completes(stack: Stack) -> None:
    probe(stack)
    finish_healthy_run(stack)


def test_a_process_without_a_credential_is_refused_at_connect(stack: Stack) -> None:
    async def anonymous() -> None:
        nc = NatsClient()
        try:
            await nc.connect(stack.url, allow_reconnect=False, max_reconnect_attempts=0)
        finally:
            await nc.close()

    with pytest.raises(nats.errors.Error):
        asyncio.run(anonymous())
    probe(stack)
