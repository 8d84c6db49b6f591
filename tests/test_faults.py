"""Fault tests: real `dagnats serve` and worker processes, SIGKILLed at chosen points.

Each test runs its own serve (its own nats-server and data dir under tmp_path) and workers of
tests/fault_workers.py, whose handlers record every call in a file and block on a gate file
when a step asks, so a test kills a process while a handler is known to be inside. Nothing is
mocked; every wait is bounded; process output is kept under tmp_path and its tail printed
when a test fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from dagnats.client import Client, RunExistsError
from dagnats.runtime.clock import new_seed, now_ms
from dagnats.runtime.queue_anchor import queued
from dagnats.runtime.resources import (
    COMMANDS_STREAM,
    HISTORY_STREAM,
    TASKS_STREAM,
    command_subject,
    history_subject,
    task_subject,
)
from dagnats.runtime.serve import Server
from kernel import codec
from kernel.commands import CancelRun, CompleteTask, StartRun
from kernel.errors import DagnatsError
from kernel.events import AnyEvent, StepFailed, StepLost
from kernel.state import RunState
from tests.fault_support import (
    Processes,
    Serve,
    attempts_started,
    connected,
    count_events,
    decisions_of,
    events_of,
    has_event,
    process_is_gone,
    read_dead,
    role_options,
    workflow,
)
from tests.nats_fixtures import wait_for

Steps = list[dict[str, Any]]
run_timeout_s = 30.0
many_runs_timeout_s = 15.0  # 30 runs of 5 steps take about 1 s here
cli_timeout_s = 20.0  # one CLI command; each takes well under a second here
step_timeout_ms = 15_000



async def history_events(serve: Serve, run_id: str) -> list[AnyEvent]:
    async with connected(serve.url) as client:
        return events_of(await decisions_of(client, run_id))


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def wait_reconnected(events_file: Path, after: int) -> None:
    """Wait until the worker's connection events show a reconnect after the first `after`."""
    await wait_for(
        lambda: "reconnected" in lines_of(events_file)[after:],
        timeout_ms=step_timeout_ms,
        what=f"the worker to reconnect ({events_file})",
    )


async def take_task_token(worker: Client, task_type: str) -> str:
    """Take the next task of `task_type` as a worker does (and let it go): the engine's token
    of it, which a result must carry (runtime/task_tokens)."""
    taken: list[Any] = []

    async def fetched() -> bool:
        taken.extend(await worker.connection.tasks.fetch(task_type, batch=1, timeout_ms=200))
        return bool(taken)

    await wait_for(fetched, timeout_ms=step_timeout_ms, what=f"a {task_type} task taken")
    token = getattr(taken[0], "task_token", None)
    assert isinstance(token, str) and token, "the engine signs the tasks it publishes"
    await taken[0].ack()
    return token


# -- 1. serve SIGKILLed mid-run -----------------------------------------------------------


FOUR_STEPS: Steps = [
    {"id": "first", "task": "fault.work"},
    {"id": "fast", "task": "fault.work", "depends_on": ["first"]},
    {"id": "slow", "task": "fault.work", "depends_on": ["first"], "metadata": {"gate": "slow"}},
    {"id": "last", "task": "fault.work", "depends_on": ["fast", "slow"]},
]


async def test_serve_killed_mid_run_resumes_and_redispatches_nothing_done(
    procs: Processes, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    serve = await procs.serve(data_dir)
    _worker, worker_events = procs.worker(serve.url)
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("kill-serve", FOUR_STEPS))
        run_id = await client.start("kill-serve", {"order": 1})

        async def at_kill_point() -> bool:
            events = events_of(await decisions_of(client, run_id))
            return (
                has_event(events, "step.completed", "first")
                and has_event(events, "step.completed", "fast")
                and len(procs.calls_of(run_id, "slow")) == 1
            )

        await wait_for(at_kill_point, timeout_ms=step_timeout_ms, what="first+fast done, slow in")
        before = events_of(await decisions_of(client, run_id))
    assert not has_event(before, "step.scheduled", "last"), "the kill point is mid-run"

    nats_pid = serve.nats_pid()
    disconnects = lines_of(worker_events).count("disconnected")
    await serve.process.kill()
    await wait_for(
        lambda: process_is_gone(nats_pid),
        timeout_ms=5_000,
        what=f"serve's nats-server child {nats_pid} to die with it",
    )
    await wait_for(
        lambda: lines_of(worker_events).count("disconnected") > disconnects,
        timeout_ms=5_000,
        what="the worker to notice the server is gone",
    )
    seen = len(lines_of(worker_events))

    restarted = await procs.serve(data_dir, port=serve.port)
    assert restarted.url == serve.url
    await wait_reconnected(worker_events, seen)
    procs.open_gate("slow")
    async with connected(restarted.url) as client:
        final = await client.wait(run_id, timeout_s=run_timeout_s)
        after = events_of(await decisions_of(client, run_id))

    assert final.status == "completed", final.error
    assert after[: len(before)] == before, "the history before the kill is intact"
    step_ids = [step["id"] for step in FOUR_STEPS]
    assert count_events(after, "step.completed") == dict.fromkeys(step_ids, 1)
    assert count_events(after, "run.started") == {"": 1}
    for step_id in ("first", "fast", "last"):  # one call per attempt; done before the kill:
        attempts = [call["attempt"] for call in procs.calls_of(run_id, step_id)]  # never again
        assert attempts == sorted(attempts_started(after, step_id)) == [1], (step_id, attempts)
    # The attempt in flight at the kill: JetStream persists a consumer's delivery state
    # asynchronously (~100-200 ms), so a server killed right after delivering the task
    # delivers it again after the restart as a first delivery (num_delivered 1), which the
    # worker cannot tell from a new task: at-least-once, the same attempt and idempotency
    # key. Tighten to `== [1]` once the worker skips a delivery of an attempt it is running.
    slow_attempts = [call["attempt"] for call in procs.calls_of(run_id, "slow")]
    assert attempts_started(after, "slow") == {1}
    assert slow_attempts == [1], slow_attempts


# -- 2. a worker SIGKILLed mid-task ---------------------------------------------------------


async def test_worker_killed_mid_task_is_retried_on_another_after_heartbeat_timeout(
    procs: Processes, tmp_path: Path
) -> None:
    ack_wait_ms = 2_000
    serve = await procs.serve(tmp_path / "data")
    workers = [
        procs.worker(serve.url, ack_wait_ms=ack_wait_ms, heartbeat_ms=300)[0] for _ in range(2)
    ]
    steps: Steps = [
        {"id": "prep", "task": "fault.work"},
        {
            "id": "victim", "task": "fault.work", "depends_on": ["prep"],
            "metadata": {"gate": "never-opened", "block_attempts": "1"},
            "retry": {"max_attempts": 3, "strategy": "fixed", "initial_delay": "100ms"},
        },
        {"id": "after", "task": "fault.work", "depends_on": ["victim"]},
    ]  # fmt: skip
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("kill-worker", steps))
        run_id = await client.start("kill-worker", None)
        await wait_for(
            lambda: len(procs.calls_of(run_id, "victim")) == 1,
            timeout_ms=step_timeout_ms,
            what="a worker to run victim's first attempt",
        )
        holder_pid = procs.calls_of(run_id, "victim")[0]["pid"]
        holder = next(worker for worker in workers if worker.pid == holder_pid)
        survivor = next(worker for worker in workers if worker.pid != holder_pid)

        # The holder heartbeats: held past its ack wait, the task is not delivered again.
        held_s = ack_wait_ms / 1000 * 1.5
        await asyncio.sleep(held_s)  # a bounded window in which nothing may happen
        assert len(procs.calls_of(run_id, "victim")) == 1, "redelivered to a live worker"
        events = events_of(await decisions_of(client, run_id))
        assert not has_event(events, "step.failed", "victim"), "a live attempt failed"

        killed_at = time.monotonic()
        await holder.kill()
        final = await client.wait(run_id, timeout_s=run_timeout_s)
        waited_s = time.monotonic() - killed_at
        events = events_of(await decisions_of(client, run_id))

    assert final.status == "completed", final.error
    calls = procs.calls_of(run_id, "victim")
    assert [(c["attempt"], c["pid"]) for c in calls] == [(1, holder.pid), (2, survivor.pid)]
    # The vanished worker's attempt is lost, not failed: the retry policy is not consumed.
    assert not [e for e in events if isinstance(e, StepFailed) and e.step_id == "victim"]
    lost = [e for e in events if isinstance(e, StepLost) and e.step_id == "victim"]
    assert [(e.attempt, e.error.kind) for e in lost] == [(1, "lost")]
    assert has_event(events, "step.scheduled", "victim", attempt=2)
    assert has_event(events, "step.completed", "victim", attempt=2)
    assert not has_event(events, "step.completed", "victim", attempt=1)
    assert count_events(events, "step.completed") == {"prep": 1, "victim": 1, "after": 1}
    # It took the heartbeat timeout (less the last heartbeat's age), not less.
    assert waited_s >= (ack_wait_ms - 300) / 1000 - 0.1, waited_s
    assert survivor.alive()


async def test_worker_killed_mid_step_without_retry_policy_the_run_completes_on_another(
    procs: Processes, tmp_path: Path
) -> None:
    """A lost attempt is not a failure: with no retry policy at all, a step whose worker is
    SIGKILLed inside its handler runs again on a worker started afterwards; the handler ran
    at most twice and the step's result is recorded once."""
    heartbeat_timeout_s = 1.5
    serve = await procs.serve(tmp_path / "data")
    first = procs.cli_worker(serve.url, heartbeat_timeout_s=heartbeat_timeout_s)
    steps: Steps = [
        {"id": "victim", "task": "fault.work",
         "metadata": {"gate": "never-opened", "block_attempts": "1"}},
        {"id": "after", "task": "fault.work", "depends_on": ["victim"]},
    ]  # fmt: skip
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("no-retry-kill", steps))
        run_id = await client.start("no-retry-kill", None)
        await wait_for(
            lambda: len(procs.calls_of(run_id, "victim")) == 1,
            timeout_ms=step_timeout_ms,
            what="the first worker to be inside victim's handler",
        )
        await first.kill()
        second = procs.cli_worker(serve.url, heartbeat_timeout_s=heartbeat_timeout_s)
        final = await client.wait(run_id, timeout_s=run_timeout_s)
        events = events_of(await decisions_of(client, run_id))

    assert final.status == "completed", final.error
    calls = procs.calls_of(run_id, "victim")
    assert 1 <= len(calls) <= 2, calls
    assert [(c["attempt"], c["pid"]) for c in calls] == [(1, first.pid), (2, second.pid)]
    assert count_events(events, "step.completed") == {"victim": 1, "after": 1}
    assert not [e for e in events if isinstance(e, StepFailed)], "a lost attempt is no failure"
    lost = [(e.step_id, e.attempt, e.error.kind) for e in events if isinstance(e, StepLost)]
    assert lost == [("victim", 1, "lost")]
    assert second.alive()


# -- 3. serve's nats-server child SIGKILLed ---------------------------------------------------


async def test_nats_child_killed_serve_exits_clearly_and_restart_loses_nothing(
    procs: Processes, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    serve = await procs.serve(data_dir)
    _worker, worker_events = procs.worker(serve.url)
    steps: Steps = [
        {"id": "one", "task": "fault.work"},
        {"id": "gated", "task": "fault.work", "depends_on": ["one"], "metadata": {"gate": "g3"}},
        {"id": "three", "task": "fault.work", "depends_on": ["gated"]},
    ]
    async with connected(serve.url) as client:
        await client.register_workflow(workflow("kill-nats", steps))
        run_id = await client.start("kill-nats", {"k": 3})

        await wait_for(
            lambda: len(procs.calls_of(run_id, "gated")) == 1,
            timeout_ms=step_timeout_ms,
            what="gated's handler to run",
        )
        before = await decisions_of(client, run_id)

    seen = len(lines_of(worker_events))
    os.kill(serve.nats_pid(), signal.SIGKILL)
    code = await serve.process.wait_exit(timeout_ms=15_000)
    assert code == 1, f"serve exited with {code}"
    stderr_lines = [line for line in serve.process.stderr().splitlines() if line.strip()]
    errors = [line for line in stderr_lines if line.startswith("error:")]
    hints = [line for line in stderr_lines if line.startswith("hint:")]
    assert len(errors) == 1 and len(hints) == 1, stderr_lines
    assert "nats-server exited unexpectedly" in errors[0], errors[0]
    assert str(data_dir) in hints[0] and "no data is lost" in hints[0], hints[0]
    assert not any("Traceback" in line for line in stderr_lines), stderr_lines
    assert not (data_dir / "nats.url").exists(), "serve removed its URL file on the way out"

    restarted = await procs.serve(data_dir, port=serve.port)
    await wait_reconnected(worker_events, seen)
    procs.open_gate("g3")
    async with connected(restarted.url) as client:
        final = await client.wait(run_id, timeout_s=run_timeout_s)
        after = await decisions_of(client, run_id)
    assert final.status == "completed", final.error
    assert after[: len(before)] == before, "the history before the crash is intact"
    assert count_events(events_of(after), "step.completed") == {"one": 1, "gated": 1, "three": 1}


# -- 4. two engines on one NATS ---------------------------------------------------------------


FIVE_STEPS: Steps = [
    {"id": "s1", "task": "fault.work"},
    {"id": "s2", "task": "fault.work", "depends_on": ["s1"]},
    {"id": "s3", "task": "fault.other", "depends_on": ["s1"]},
    {"id": "s4", "task": "fault.work", "depends_on": ["s2", "s3"]},
    {"id": "s5", "task": "fault.other", "depends_on": ["s4"]},
]


async def test_two_engines_share_the_commands_and_every_run_completes_once(
    procs: Processes, tmp_path: Path
) -> None:
    runs = 30
    serve = await procs.serve(tmp_path / "a")  # engine A, a process with the embedded NATS
    procs.worker(serve.url)
    procs.worker(serve.url)
    other = Server(tmp_path / "b", nats_url=serve.url)  # engine B, in this process: counted
    await other.start()
    stop = asyncio.Event()
    engine_b = asyncio.create_task(other.run(stop))
    try:
        async with connected(serve.url) as client:
            await client.register_workflow(workflow("two-engines", FIVE_STEPS))
            run_ids = [f"two-{index}" for index in range(runs)]
            await asyncio.gather(*(client.start("two-engines", i, run_id=r) for i, r in
                                   enumerate(run_ids)))  # fmt: skip
            waited = await asyncio.gather(
                *(client.wait(run_id, timeout_s=many_runs_timeout_s) for run_id in run_ids),
                return_exceptions=True,
            )
            stuck = {
                run_id: [(s.step_id, s.status) for s in (await client.get_run(run_id)).steps]
                for run_id, final in zip(run_ids, waited, strict=True)
                if not isinstance(final, RunState)
            }
            assert not stuck, f"{len(stuck)} of {runs} runs did not end: {stuck}"
            finals = [final for final in waited if isinstance(final, RunState)]
            histories = [await decisions_of(client, run_id) for run_id in run_ids]
            folded = [await client.get_run(run_id) for run_id in run_ids]
    finally:
        stop.set()
        await asyncio.wait_for(engine_b, timeout=10)
        await other.stop()

    assert [final.status for final in finals] == ["completed"] * runs
    assert [state.status for state in folded] == ["completed"] * runs
    step_ids = [step["id"] for step in FIVE_STEPS]
    for run_id, decisions in zip(run_ids, histories, strict=True):
        events = events_of(decisions)
        assert count_events(events, "step.completed") == dict.fromkeys(step_ids, 1), run_id
        assert count_events(events, "run.started") == {"": 1}, run_id
        assert count_events(events, "run.completed") == {"": 1}, run_id
    appended = sum(len(decisions) for decisions in histories)
    assert other.engine is not None
    by_b = other.engine.counters.get("applied", 0)
    assert 0 < by_b < appended, f"engine B appended {by_b} of {appended}: both must take part"


# -- 5. duplicate commands ----------------------------------------------------------------------


async def test_duplicate_starts_and_redelivered_results_make_one_set_of_events(
    procs: Processes, tmp_path: Path
) -> None:
    serve = await procs.serve(tmp_path / "data")  # no worker: the test plays the worker
    steps: Steps = [{"id": "a", "task": "fault.other"}, {"id": "b", "task": "fault.other",
                                                   "depends_on": ["a"]}]  # fmt: skip
    run_id = "dup-run"
    async with connected(serve.url) as client, connected(serve.url, "worker") as worker:
        await client.register_workflow(workflow("dups", steps))
        assert await client.start("dups", {"x": 1}, run_id=run_id) == run_id
        assert await client.start("dups", {"x": 1}, run_id=run_id) == run_id
        with pytest.raises(RunExistsError):
            await client.start("dups", {"x": 2}, run_id=run_id)
        first = (await decisions_of(client, run_id))[0].command
        assert isinstance(first, StartRun)
        for copy in range(2):  # the identical StartRun, under new msg ids
            await client.send(first, msg_id=f"start-again-{copy}")

        for step_id in ("a", "b"):

            async def scheduled(step_id: str = step_id) -> bool:
                events = events_of(await decisions_of(client, run_id))
                return has_event(events, "step.scheduled", step_id, attempt=1)

            await wait_for(scheduled, timeout_ms=step_timeout_ms, what=f"{step_id} scheduled")
            token = await take_task_token(worker, "fault.other")  # as a worker takes it
            result = CompleteTask(
                run_id=run_id, at_ms=now_ms(), seed=new_seed(), step_id=step_id, attempt=1,
                output=msgspec.Raw(json.dumps({"done": step_id}).encode()),
            )  # fmt: skip
            for copy in range(2):  # the same result delivered twice (a worker's to send)
                await worker.connection.commands.publish_command(
                    run_id, codec.encode(result), f"result-{step_id}-{copy}", token=token
                )
        final = await client.wait(run_id, timeout_s=run_timeout_s)
        js = client.connection.js

        async def commands_drained() -> bool:  # (but the stream's anchor: queue_anchor)
            return await queued(js, COMMANDS_STREAM) == 0

        await wait_for(commands_drained, timeout_ms=step_timeout_ms, what="every command handled")
        decisions = await decisions_of(client, run_id)

    assert final.status == "completed"
    events = events_of(decisions)
    assert count_events(events, "run.started") == {"": 1}
    assert count_events(events, "step.completed") == {"a": 1, "b": 1}
    assert count_events(events, "run.completed") == {"": 1}
    # One history message per command that changed something: the start and two results.
    assert [type(decision.command).__name__ for decision in decisions] == [
        "StartRun", "CompleteTask", "CompleteTask"
    ]  # fmt: skip


# -- 6. poison messages -------------------------------------------------------------------------


async def test_poison_on_each_stream_is_set_aside_and_the_rest_flows(
    procs: Processes, tmp_path: Path
) -> None:
    serve = await procs.serve(tmp_path / "data")
    procs.worker(serve.url)
    steps: Steps = [
        {"id": "hold", "task": "fault.work", "metadata": {"gate": "poisoned"}},
        {"id": "tail", "task": "fault.work", "depends_on": ["hold"]},
    ]
    options = role_options(tmp_path / "data")  # forging poison takes the admin credential
    nc = await nats.connect(serve.url, **options, connect_timeout=5, allow_reconnect=False)
    try:
        js = nc.jetstream()
        async with connected(serve.url) as client:
            await client.register_workflow(workflow("poison", steps))
            await client.register_workflow(
                workflow("healthy", [{"id": "only", "task": "fault.work"}])
            )
            parked = await client.start("poison", None, run_id="to-be-parked")

            await wait_for(
                lambda: len(procs.calls_of(parked, "hold")) == 1,
                timeout_ms=step_timeout_ms,
                what="hold's handler to run",
            )
            # History: garbage appended behind the engine's back, then a result arrives.
            garbage_ack = await js.publish(
                history_subject(parked), b"\x00garbage history", stream=HISTORY_STREAM
            )
            procs.open_gate("poisoned")
            await wait_for(
                lambda: f"PARKED run {parked}" in serve.process.stderr(),
                timeout_ms=step_timeout_ms,
                what="the engine to log PARKED for the poisoned run",
            )
            # Commands: garbage bytes, and a valid command for a run that does not exist.
            await js.publish(command_subject("poison-cmd"), b"\x00not a command",
                             stream=COMMANDS_STREAM)  # fmt: skip
            ghost = CancelRun(run_id="ghost-run", at_ms=now_ms(), seed=1, reason="no such run")
            await client.send(ghost, msg_id="ghost-1")
            # Tasks: garbage on a task subject a worker serves.
            poison_task = {"Nats-Msg-Id": "poison-task"}
            await js.publish(
                task_subject("fault.poison"), b"\x00not a task", stream=TASKS_STREAM,
                headers=poison_task,
            )  # fmt: skip

            healthy = await client.start("healthy", {"after": "poison"})
            final = await client.wait(healthy, timeout_s=run_timeout_s)

            async def four_dead_letters() -> bool:
                return len(await read_dead(js)) >= 4

            # The unknown run's command is retried a few times first (it may have overtaken
            # its StartRun on another engine): allow for those deliveries.
            await wait_for(four_dead_letters, timeout_ms=3 * step_timeout_ms, what="4 dead letters")
            letters = {letter.subject: letter for letter in await read_dead(js)}
            last = await js.get_last_msg(HISTORY_STREAM, history_subject(parked))
            with pytest.raises(DagnatsError):
                await client.get_run(parked)
    finally:
        await nc.close()

    assert final.status == "completed"
    assert sorted(letters) == ["dagnats.dead.command", "dagnats.dead.parked",
                               "dagnats.dead.task", "dagnats.dead.unknown_run"]  # fmt: skip
    parked_letter = letters["dagnats.dead.parked"]
    assert parked_letter.data == parked.encode()
    assert f"run {parked} parked: history message" in parked_letter.reason, parked_letter.reason
    command = letters["dagnats.dead.command"]
    assert command.data == b"\x00not a command"
    assert command.reason.startswith("not a valid command"), command.reason
    unknown = letters["dagnats.dead.unknown_run"]
    assert json.loads(unknown.data)["run_id"] == "ghost-run"
    assert "'ghost-run' does not exist" in unknown.reason, unknown.reason
    task = letters["dagnats.dead.task"]
    assert task.data == b"\x00not a task"
    assert task.reason.startswith("not a valid task message"), task.reason
    # The parked run: nothing appended after the garbage; the log says why.
    assert last.seq == garbage_ack.seq
    parked_lines = [line for line in serve.process.stderr().splitlines() if "PARKED" in line]
    assert len(parked_lines) >= 1 and all(parked in line for line in parked_lines), parked_lines
    assert f"history message at sequence {garbage_ack.seq} does not decode" in parked_lines[0]
    assert serve.process.alive()


# -- the CLI against a live serve ---------------------------------------------------------------


async def test_cli_run_wait_show_and_errors_against_a_live_serve(
    procs: Processes, tmp_path: Path
) -> None:
    serve = await procs.serve(tmp_path / "data")
    procs.cli_worker(serve.url)
    url = ["--nats-url", serve.url]
    steps: Steps = [
        {"id": "one", "task": "fault.work"},
        {"id": "two", "task": "fault.other", "depends_on": ["one"]},
    ]
    good = tmp_path / "good.json"
    good.write_bytes(workflow("cli-good", steps))
    bad = tmp_path / "bad.json"
    bad.write_bytes(workflow("cli-bad", [{**steps[0], "metadata": {"fail": "non_retryable"}}]))
    held = tmp_path / "held.json"
    held.write_bytes(workflow("cli-held", [{**steps[0], "metadata": {"gate": "cli-never"}}]))

    def cli(*args: str) -> tuple[int, str, str]:
        result = procs.cli(*args, *url, timeout_s=cli_timeout_s)
        return result.returncode, result.stdout, result.stderr

    for file in (good, bad, held):
        code, out, err = cli("workflow", "register", str(file), "--json")
        assert code == 0, err
    code, out, err = cli("run", "start", "cli-good", "--input", '{"n": 1}', "--run-id", "c1",
                         "--json")  # fmt: skip
    assert (code, json.loads(out), err) == (0, {"run_id": "c1"}, ""), err

    code, out, err = cli("run", "wait", "c1", "--timeout", "20", "--json")
    assert (code, err) == (0, ""), err
    waited = json.loads(out)
    assert waited["run_id"] == "c1" and waited["status"] == "completed"
    assert waited["workflow"] == "cli-good"
    assert [(s["step_id"], s["status"]) for s in waited["steps"]] == [
        ("one", "completed"), ("two", "completed")
    ]  # fmt: skip

    code, out, err = cli("run", "show", "c1", "--json")
    assert (code, err) == (0, ""), err
    assert json.loads(out) == waited

    code, out, err = cli("run", "start", "cli-bad", "--run-id", "c2", "--wait", "--json")
    assert code == 1, (out, err)
    assert json.loads(out)["run"]["status"] == "failed"
    code, out, err = cli("run", "wait", "c2", "--json")
    assert code == 1 and json.loads(out)["status"] == "failed", (out, err)

    code, out, err = cli("run", "start", "cli-held", "--run-id", "c3")
    assert code == 0, err
    code, out, err = cli("run", "wait", "c3", "--timeout", "1")
    lines = err.splitlines()
    assert code == 1 and len(lines) == 2, err
    assert lines[0].startswith("error: run 'c3' did not end within 1.0s"), lines
    assert lines[1].startswith("hint: "), lines

    code, out, err = cli("run", "show", "nope")
    lines = err.splitlines()
    assert (code, out) == (1, ""), (out, err)
    assert len(lines) == 2, err
    assert lines[0].startswith("error: run 'nope' does not exist"), lines
    assert lines[1].startswith("hint: "), lines
