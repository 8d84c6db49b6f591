"""The example HTTP workers (examples/http_worker/: bash + curl, and Node.js with its fetch)
complete the example workflow against a real engine through the bridge, each retrying the
first attempt of its step (it fails retryably), each result recorded once.

The workers are real processes (tests/fault_support.Processes), killed by pid at the end.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from kernel.events import StepCompleted, StepFailed
from tests.bridge_support import BridgeStack, bridge_stack
from tests.fault_support import REPO_ROOT, Processes

EXAMPLE = REPO_ROOT / "examples" / "http_worker"
WAIT_S = 60.0


@pytest_asyncio.fixture
async def procs(tmp_path: Path) -> AsyncIterator[Processes]:
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        await processes.close()


def needs(*programs: str) -> None:
    missing = [program for program in programs if shutil.which(program) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} on PATH")


async def test_the_shell_and_node_workers_complete_the_example_with_retries(
    tmp_path: Path, procs: Processes
) -> None:
    needs("bash", "curl", "node")
    async with bridge_stack(tmp_path / "data") as stack:
        env_url = {"DAGNATS_HTTP_URL": stack.base_url}
        shell = procs.start(
            "worker-sh", ["env", *_pairs(env_url), "bash", str(EXAMPLE / "worker.sh")]
        )
        node = procs.start(
            "worker-mjs", ["env", *_pairs(env_url), "node", str(EXAMPLE / "worker.mjs")]
        )
        await stack.client.register_workflow((EXAMPLE / "workflow.json").read_bytes())
        run_id = await stack.client.start("http_greeting", {"name": "ada"})
        state = await stack.client.wait(run_id, timeout_s=WAIT_S)
        assert state.status == "completed", (state.error, procs.report())
        assert bytes(state.output) == b'{"shout":"HELLO ADA!"}'
        await _check_history(stack, run_id)
        assert shell.alive() and node.alive(), procs.report()
        assert "attempt 2: hello ada" in shell.stderr(), shell.tail()
        assert "attempt 2: HELLO ADA!" in node.stderr(), node.tail()


async def _check_history(stack: BridgeStack, run_id: str) -> None:
    events = await stack.events(run_id)
    failed = [(e.step_id, e.attempt, e.error.kind) for e in events if isinstance(e, StepFailed)]
    assert failed == [("greet", 1, "error"), ("shout", 1, "error")]
    completed = Counter((e.step_id, e.attempt) for e in events if isinstance(e, StepCompleted))
    assert completed == Counter({("greet", 2): 1, ("shout", 2): 1})


def _pairs(env: dict[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in env.items()]
