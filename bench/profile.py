"""`python -m bench.profile`: where the documented path spends its CPU, per process.

Starts `dagnats serve` (its projections on), a `dagnats worker` and the public client, as
`bench.peers_dagnats` does, then runs 10-step chains (`--steps`) one after the other for `--seconds`
while py-spy (the `bench` extra) samples the serve, the worker and this process. Prints,
per process, the functions with the most samples in them or below them (inclusive) and
the most samples in them alone (self), as text; `--out DIR` keeps the raw collapsed stacks.
A profiling aid, not a bench: it prints no JSON line and has no target.

This module may start processes and write only inside the temporary directory it creates
(and `--out`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Final

from bench.common import Child
from bench.peers_dagnats import CHAIN_STEPS, RUN_TIMEOUT_S, _stop, chain, start_worker
from bench.recovery import serve_command
from dagnats.client import Client
from dagnats.runtime.nats_server import pick_free_port

SAMPLE_RATE_HZ: Final = 200
TOP_FUNCTIONS: Final = 25
SPY_STOP_TIMEOUT_S: Final = 30.0


def spy_command(pid: int, seconds: float, out: Path, gil: bool = False) -> list[str]:
    """py-spy's command; `gil`: only samples of a thread holding the GIL (Python's own CPU:
    without it, time a thread spends blocked in a socket write counts as busy, and on
    loopback those writes are most of a process's samples)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return [
        spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
        "--rate", str(SAMPLE_RATE_HZ), "--format", "raw", "--output", str(out), "--nonblocking",
        *(["--gil"] if gil else []),
    ]  # fmt: skip


def top(collapsed: Path, count: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """(inclusive, self, total samples) of a py-spy raw (collapsed stacks) file."""
    inclusive: collections.Counter[str] = collections.Counter()
    alone: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, number = line.rpartition(" ")
        if not number.isdigit():
            continue
        samples = int(number)
        frames = [frame.split(" (")[0] + " " + _where(frame) for frame in stack.split(";")]
        total += samples
        for frame in set(frames):
            inclusive[frame] += samples
        alone[frames[-1]] += samples
    return inclusive.most_common(count), alone.most_common(count), total


def _where(frame: str) -> str:
    inside = frame.partition(" (")[2].rstrip(")")
    path, _, _line = inside.rpartition(":")
    return "(" + "/".join(Path(path).parts[-2:]) + ")"


async def chains(client: Client, seconds: float, steps: int = CHAIN_STEPS) -> int:
    await client.register_workflow(chain("profile-chain", steps))
    runs = 0
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        run_id = await client.start("profile-chain", run_id=f"p-{uuid.uuid4().hex[:12]}")
        state = await client.wait(run_id, timeout_s=RUN_TIMEOUT_S)
        assert state.status == "completed", state.status
        runs += 1
    return runs


async def profile(seconds: float, out: Path, gil: bool = False, steps: int = CHAIN_STEPS) -> None:
    with tempfile.TemporaryDirectory(prefix="dagnats-bench-profile-") as directory:
        root = Path(directory)
        data_dir = root / "data"
        serve = await Child.start(serve_command(data_dir, pick_free_port()), root / "serve.log")
        url = str(serve.ready["nats_url"])
        worker = await start_worker(url, root, "worker")
        try:
            client = await Client.connect(url, data_dir=data_dir)
            await chains(client, 1.0, steps)  # warm-up
            pids = {"serve": serve.pid, "worker": worker.pid, "client": os.getpid()}
            spies = {
                name: await asyncio.create_subprocess_exec(
                    *spy_command(pid, seconds, out / f"{name}.txt", gil),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                for name, pid in pids.items()
            }
            runs = await chains(client, seconds + 1.0, steps)
            for spy in spies.values():
                await asyncio.wait_for(spy.wait(), SPY_STOP_TIMEOUT_S)
            await client.close()
        finally:
            await _stop(serve, worker)
    print(f"{runs} runs of a {steps}-step chain in about {seconds + 1:.0f} s")
    for name in pids:
        inclusive, alone, total = top(out / f"{name}.txt", TOP_FUNCTIONS)
        print(f"\n== {name}: {total} samples; inclusive % ==")
        for frame, samples in inclusive:
            print(f"{samples * 100 / max(total, 1):6.1f}  {frame}")
        print(f"-- {name}: self % --")
        for frame, samples in alone:
            print(f"{samples * 100 / max(total, 1):6.1f}  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    parser.add_argument("--steps", type=int, default=CHAIN_STEPS, help="steps of each run")
    arguments = parser.parse_args()
    if arguments.out is not None:
        arguments.out.mkdir(parents=True, exist_ok=True)
        asyncio.run(profile(arguments.seconds, arguments.out, arguments.gil, arguments.steps))
        return
    with tempfile.TemporaryDirectory(prefix="dagnats-bench-spy-") as directory:
        asyncio.run(profile(arguments.seconds, Path(directory), arguments.gil, arguments.steps))


if __name__ == "__main__":
    main()
