"""`make demo`: the example order workflow end to end, from nothing, in one process.

Starts an embedded nats-server in a temporary data dir, the engine, and the example worker;
registers `examples/order/workflow.json` (shipped in the wheel as `dagnats.examples`, so the
demo runs from an installed wheel too); runs it with live progress (the charge step fails
once and is retried); prints the history; shuts everything down; exits 0 when the run completed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path

from rich.console import Console

from dagnats.cli import render
from dagnats.client import Client
from dagnats.runtime.serve import local_stack
from kernel.events import Decision
from kernel.state import RunState

EXAMPLES_DIR = Path(__file__).parent / "examples"  # `examples/` of the repo, via a link
EXAMPLE_DIR = EXAMPLES_DIR / "order"
SCHEMA_FILE = "workflow.schema.json"
COPIED_FILES = ("workflow.json", "input.json", "worker.py")
run_timeout_s = 60.0


def copy_example(target: Path) -> list[Path]:
    """Copy the order example (its workflow, input and worker) to `target/order`, and the
    workflow JSON Schema its `$schema` names to `target`; returns the files written.

    Raises:
        OSError: `target` cannot be written.
    """
    order = target / "order"
    order.mkdir(parents=True, exist_ok=True)
    written = [target / SCHEMA_FILE]
    shutil.copyfile(EXAMPLES_DIR / SCHEMA_FILE, written[0])
    for name in COPIED_FILES:
        shutil.copyfile(EXAMPLE_DIR / name, order / name)
        written.append(order / name)
    return written


async def run_demo(console: Console) -> RunState:
    """Run the demo; returns the run's final state."""
    from dagnats.examples.order.worker import worker

    with tempfile.TemporaryDirectory(prefix="dagnats-demo-") as data_dir:
        async with local_stack(Path(data_dir), worker) as (info, client):
            console.print(f"embedded NATS at {info.nats_url} (data in {info.data_dir})")
            return await _run_example(client, console)


async def _run_example(client: Client, console: Console) -> RunState:
    revision = await client.register_workflow((EXAMPLE_DIR / "workflow.json").read_bytes())
    console.print(f"registered workflow 'order' (revision {revision})")
    order = json.loads((EXAMPLE_DIR / "input.json").read_text())
    run_id = await client.start("order", order)
    console.print(f"started run {run_id} with input {json.dumps(order)}")
    last_shown: dict[str, tuple[str, int]] = {}

    def progress(state: RunState, _decision: Decision) -> None:
        for step in state.steps:
            seen = (step.status, step.attempt)
            if last_shown.get(step.step_id) != seen and step.status != "pending":
                last_shown[step.step_id] = seen
                detail = ""
                if step.error is not None and step.status == "retry_wait":
                    detail = f" ({step.error.message}; retrying)"
                console.print(
                    f"  {step.step_id:<15} {step.status:<11} attempt {step.attempt}{detail}"
                )

    final = await client.wait(run_id, timeout_s=run_timeout_s, on_update=progress)
    console.print(render.run_table(final))
    history = [item async for item in client.history(run_id)]
    console.print(render.history_table(history))
    return final


def main() -> int:
    console = Console()
    final = asyncio.run(run_demo(console))
    console.print(f"run ended as [bold]{final.status}[/bold]")
    return 0 if final.status == "completed" else 1


if __name__ == "__main__":
    raise SystemExit(main())
