"""`examples/coding_pipeline/` offline, end to end on a real embedded nats-server: the planner
lays out a scratch git repository and plans the coding agent; the agent, scripted by the fake
model server (`script.json`), lists, reads, runs the failing tests, writes the fix, runs them
again and reports as `Report`; an approval gates the merge into `main`. Also: the tools stay
inside the repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from dagnats.client import Client
from dagnats.llm.fake import load_script
from dagnats.runtime.serve import local_stack
from dagnats.worker_context import NonRetryableError
from examples.coding_pipeline import handlers
from kernel.events import AgentTurnCompleted
from kernel.workflow import parse_workflow
from tests.fake_model import fake_server, model_for, turn_context
from tests.nats_fixtures import wait_for

EXAMPLE = Path(handlers.__file__).parent
WAIT_S = 60.0


async def test_the_coding_pipeline_fixes_the_bug_and_merges_after_approval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODING_SCRATCH", str(tmp_path / "scratch"))
    workflow = parse_workflow((EXAMPLE / "workflow.json").read_bytes())
    brief = msgspec.json.decode((EXAMPLE / "brief.json").read_bytes())
    async with fake_server(load_script(EXAMPLE / "script.json")) as server:
        worker = handlers.build_worker(model_for("anthropic", server.url, name="claude-sonnet-4-5"))
        async with local_stack(tmp_path / "data", worker) as (info, client):
            run_id = await client.start(workflow, brief)

            async def review_waits() -> bool:
                state = await client.get_run(run_id)
                assert state.status == "running", (state.status, state.error)
                steps = dict(zip(state.step_ids, state.steps, strict=True))
                return "review" in steps and steps["review"].status == "scheduled"  # it asks

            await wait_for(review_waits, timeout_ms=int(WAIT_S * 1000), what="the review")
            repo = tmp_path / "scratch" / run_id
            assert "a - b" in git(repo, "show", "main:calc.py")  # nothing merged before approval
            approver = await Client.connect(info.nats_url, role="approver")
            try:
                await approver.approve(run_id, "review", comment="looks right")
            finally:
                await approver.close()
            state = await client.wait(run_id, timeout_s=WAIT_S)
            events = [e async for _, d in client.history(run_id) for e in d.events]
    assert state.status == "completed", state.error
    output = msgspec.json.decode(bytes(state.output))
    assert output["report"]["tests_pass"] is True and output["report"]["files_changed"] == [
        "calc.py"
    ]
    assert "a + b" in git(repo, "show", "main:calc.py")
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout
    assert sum(isinstance(e, AgentTurnCompleted) for e in events) == 5
    finished = [(e["turn"], e["digest"]) for e in server.finished()]
    assert len(finished) == len(set(finished)) == 5


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, timeout=30, check=True
    ).stdout


def test_the_tools_are_confined_to_the_runs_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CODING_SCRATCH", str(tmp_path))
    ctx = turn_context(None, turn=0)
    (tmp_path / ctx.run_id).mkdir()
    assert handlers.write_file(ctx, "pkg/a.py", "x = 1\n") == "wrote 6 characters to pkg/a.py"
    assert handlers.read_file(ctx, "pkg/a.py") == "x = 1\n"
    assert handlers.list_files(ctx) == ["pkg/a.py"]
    for bad in ("../escape.py", "/etc/passwd", ".git/config", "pkg/../../x"):
        with pytest.raises(NonRetryableError, match="outside the repository"):
            handlers.write_file(ctx, bad, "no")
