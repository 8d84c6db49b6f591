"""Handlers of the `coding_pipeline` example (examples/coding_pipeline/workflow.json); in
`handlers.py`, not `worker.py`: its model calls are HTTP, which the simulator (tests/test_sim.py
runs every `worker.py` example) does not have.

`coding.plan` reads the task brief, lays out a scratch git repository for the run (from the
brief's files, under `$CODING_SCRATCH`, default a `dagnats-coding` folder in the temp dir)
and plans one `agent_loop`: the coding agent, an `agent_turn` with four tools (`read_file`,
`write_file`, `list_files`, `run_tests`), confined to that repository, until the tests pass.
Its final answer must decode as `Report`. An approval gates `coding.merge`, which commits the
agent's work on the branch `agent` and merges it into `main`.

The model: `OPENAI_API_KEY` set -> `OpenAIChat($CODING_MODEL or gpt-4o-mini)`;
`ANTHROPIC_API_KEY` set -> `AnthropicMessages($CODING_MODEL or claude-sonnet-4-5)`; neither ->
the fake model server at `$FAKE_MODEL_URL` (default http://127.0.0.1:8765) playing
`script.json`: `python -m dagnats.llm.fake --script examples/coding_pipeline/script.json
--port 8765`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

import msgspec

from dagnats import NonRetryableError, TaskContext, Worker
from dagnats.llm import AnthropicMessages, Model, OpenAIChat, Toolset, agent_turn

file_bytes_max: Final = 256 * 1024  # read_file and write_file
files_listed_max: Final = 500
test_timeout_s: Final = 60.0
test_output_chars_max: Final = 4_000
SYSTEM: Final = (
    "You are a coding agent working in a git repository. Use the tools to look at the "
    "files, change them and run the tests; keep going until the tests pass. When they do, "
    'answer with JSON only: {"summary": ..., "files_changed": [...], "tests_pass": true}.'
)


class Report(msgspec.Struct, frozen=True, kw_only=True):
    summary: str
    files_changed: list[str]
    tests_pass: bool


def scratch_root() -> Path:
    return Path(os.environ.get("CODING_SCRATCH") or Path(tempfile.gettempdir()) / "dagnats-coding")


def repo_of(ctx: TaskContext) -> Path:
    """The run's scratch repository (one per run: tools find it from the run id)."""
    return scratch_root() / ctx.run_id


def confined(ctx: TaskContext, path: str) -> Path:
    """`path` inside the run's repository, or NonRetryableError (the model sees it)."""
    repo = repo_of(ctx).resolve()
    target = (repo / path).resolve()
    if (target != repo and repo not in target.parents) or ".git" in target.relative_to(repo).parts:
        raise NonRetryableError(f"path {path!r} is outside the repository (or inside .git)")
    return target


tools = Toolset(prefix="coding.")


@tools.tool
def list_files(ctx: TaskContext) -> list[str]:
    """List the repository's files (paths relative to its root)."""
    repo = repo_of(ctx)
    found = sorted(
        str(p.relative_to(repo))
        for p in repo.rglob("*")
        if p.is_file()
        and ".git" not in p.relative_to(repo).parts
        and "__pycache__" not in p.parts
        and ".pytest_cache" not in p.parts
    )
    return found[:files_listed_max]


@tools.tool
def read_file(ctx: TaskContext, path: str) -> str:
    """Read one file of the repository."""
    target = confined(ctx, path)
    if not target.is_file():
        raise NonRetryableError(f"no file {path!r}")
    return target.read_bytes()[:file_bytes_max].decode(errors="replace")


@tools.tool
def write_file(ctx: TaskContext, path: str, content: str) -> str:
    """Write (create or replace) one file of the repository."""
    if len(content.encode()) > file_bytes_max:
        raise NonRetryableError(
            f"content of {len(content.encode())} bytes is over {file_bytes_max}"
        )
    target = confined(ctx, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content)
    return f"wrote {len(content)} characters to {path}"


@tools.tool
def run_tests(ctx: TaskContext) -> dict[str, Any]:
    """Run the repository's tests (pytest), with a timeout."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=repo_of(ctx),
            capture_output=True,
            text=True,
            timeout=test_timeout_s,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {
            "passed": False,
            "output": f"the tests ran over {test_timeout_s:g}s and were stopped",
        }
    output = (done.stdout + done.stderr)[-test_output_chars_max:]
    return {"passed": done.returncode == 0, "output": output}


def git(repo: Path, *args: str) -> str:
    who = ["-c", "user.name=dagnats", "-c", "user.email=dagnats@localhost"]
    done = subprocess.run(
        ["git", *who, *args], cwd=repo, capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def default_model() -> Model:
    name = os.environ.get("CODING_MODEL")
    if os.environ.get("OPENAI_API_KEY"):
        return OpenAIChat(name or "gpt-4o-mini")
    if os.environ.get("ANTHROPIC_API_KEY"):
        return AnthropicMessages(name or "claude-sonnet-4-5")
    url = os.environ.get("FAKE_MODEL_URL", "http://127.0.0.1:8765")
    return AnthropicMessages(name or "claude-sonnet-4-5", base_url=url, api_key="offline")


def build_worker(model: Model) -> Worker:
    worker = Worker(concurrency=8)
    tools.register(worker)
    worker.add(
        "coding.agent",
        agent_turn(
            model=model,
            system=SYSTEM,
            tools=tools,
            output_type=Report,
            prompt=lambda brief: brief["task"],
        ),
    )

    @worker.task("coding.plan")
    async def plan(ctx: TaskContext) -> dict[str, Any]:
        brief = ctx.input
        repo = repo_of(ctx)
        if not (repo / ".git").exists():  # a retried plan finds the repository laid out
            repo.mkdir(parents=True, exist_ok=True)
            for name, text in brief["files"].items():
                confined(ctx, name).write_text(text)
            git(repo, "init", "-q", "-b", "main")
            git(repo, "add", "-A")
            git(repo, "commit", "-q", "-m", "the task's starting point")
            git(repo, "checkout", "-q", "-b", "agent")
        loop = {
            "id": "code",
            "type": "agent_loop",
            "task": "coding.agent",
            "retry": {"max_attempts": 4, "initial_delay": "500ms"},
            "config": {"max_turns": 20, "max_cost": 2.0, "tools": tools.config()},
        }
        return {"steps": [loop]}

    @worker.task("coding.merge")
    async def merge(ctx: TaskContext) -> dict[str, Any]:
        report = ctx.input["plan"]["code"]
        if not report.get("tests_pass"):
            raise NonRetryableError("the agent did not report passing tests; nothing merged")
        repo = repo_of(ctx)
        if git(repo, "status", "--porcelain").strip():
            git(repo, "add", "-A")
            git(repo, "commit", "-q", "-m", f"agent: {report['summary']}")
        git(repo, "checkout", "-q", "main")
        git(repo, "merge", "-q", "--no-ff", "-m", "merge the coding agent's change", "agent")
        head = git(repo, "rev-parse", "HEAD").strip()
        return {"merged": head, "repo": str(repo), "report": report}

    return worker


worker = build_worker(default_model())
