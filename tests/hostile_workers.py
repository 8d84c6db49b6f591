"""The hostile handlers of tests/test_hostile_worker.py, served by one real worker process
(`dagnats worker tests.hostile_workers:worker`). Each task type misbehaves in one way; the
`hostile.ok` type is the healthy one a test runs afterwards through the same worker.

This module may touch nothing but the values it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Final

from dagnats.agent import Done
from dagnats.worker import TaskContext, Worker

thread_block_s_max: Final = 60.0  # the blocked thread ends by itself, long after the test
ignore_rounds_max: Final = 10_000

worker = Worker(concurrency=2, worker_id="hostile")
worker.handler_cancel_grace_ms = 300
worker.drain_timeout_ms = 3_000
_release = threading.Event()


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


async def ok(ctx: TaskContext) -> dict[str, object]:
    return {"ok": True, "step": ctx.step_id}


async def keyboard_interrupt(ctx: TaskContext) -> None:
    raise KeyboardInterrupt


async def system_exit(ctx: TaskContext) -> None:
    raise SystemExit(3)


async def generator_exit(ctx: TaskContext) -> None:
    raise GeneratorExit


async def own_cancelled(ctx: TaskContext) -> None:
    raise asyncio.CancelledError


async def ignores_cancel(ctx: TaskContext) -> None:
    """Catches every cancellation and keeps sleeping."""
    for _ in range(ignore_rounds_max):
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.5)


async def blocks_thread(ctx: TaskContext) -> None:
    await asyncio.to_thread(_release.wait, thread_block_s_max)


async def deep_output(ctx: TaskContext) -> object:
    value: object = 1
    for _ in range(100_000):
        value = [value]
    return value


async def huge_error(ctx: TaskContext) -> None:
    raise ValueError("x" * 5_000_000)


async def unprintable(ctx: TaskContext) -> None:
    raise UnprintableError


async def bytes_output(ctx: TaskContext) -> object:
    return {"items": [{"blob": b"\x00\x01"}]}


async def nan_output(ctx: TaskContext) -> object:
    return {"items": [0, 1, 2, {"score": float("nan")}]}


async def infinity_output(ctx: TaskContext) -> object:
    return {"total": float("inf")}


async def agent_system_exit(ctx: TaskContext) -> None:
    raise SystemExit(4)


async def agent_nan(ctx: TaskContext) -> Done:
    return Done({"score": float("nan")})


HANDLERS: Final = {
    "hostile.ok": ok,
    "hostile.keyboard_interrupt": keyboard_interrupt,
    "hostile.system_exit": system_exit,
    "hostile.generator_exit": generator_exit,
    "hostile.own_cancelled": own_cancelled,
    "hostile.ignores_cancel": ignores_cancel,
    "hostile.blocks_thread": blocks_thread,
    "hostile.deep_output": deep_output,
    "hostile.huge_error": huge_error,
    "hostile.unprintable": unprintable,
    "hostile.bytes_output": bytes_output,
    "hostile.nan_output": nan_output,
    "hostile.infinity_output": infinity_output,
    "hostile.agent_system_exit": agent_system_exit,
    "hostile.agent_nan": agent_nan,
}
for _name, _handler in HANDLERS.items():
    worker.add(_name, _handler)
