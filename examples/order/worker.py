"""Handlers for the `order` example workflow (examples/order/workflow.json).

Run them with `dagnats worker examples.order.worker:worker`. `payments.charge` fails on its
first attempt (a flaky payment gateway) so every run shows a retry.
"""

from __future__ import annotations

from typing import Any

from dagnats import NonRetryableError, TaskContext, Worker

worker = Worker(concurrency=8)


@worker.task("order.validate")
async def validate(ctx: TaskContext) -> dict[str, Any]:
    order = ctx.input
    if not order.get("items"):
        raise NonRetryableError("an order needs at least one item")
    return {"order_id": order["order_id"], "amount": order["amount"], "gift": order["gift"]}


@worker.task("payments.charge")
async def charge(ctx: TaskContext) -> dict[str, Any]:
    if ctx.attempt == 1:
        raise ConnectionError("payment gateway timed out")
    return {"charge_id": f"ch-{ctx.input['order_id']}", "amount": ctx.input["amount"]}


@worker.task("inventory.reserve")
async def reserve(ctx: TaskContext) -> dict[str, Any]:
    return {"reservation": f"res-{ctx.input['order_id']}"}


@worker.task("order.gift_wrap")
async def gift_wrap(ctx: TaskContext) -> dict[str, Any]:
    return {"wrapped": True}


@worker.task("shipping.ship")
async def ship(ctx: TaskContext) -> dict[str, Any]:
    charge_id = ctx.input["charge"]["charge_id"]
    return {"tracking": f"trk-{charge_id}", "gift_wrapped": ctx.input["gift_wrap"] is not None}


@worker.task("payments.refund")
async def refund(ctx: TaskContext) -> dict[str, Any]:
    return {"refunded": ctx.input["step_id"]}


@worker.task("support.notify")
async def notify_support(ctx: TaskContext) -> dict[str, Any]:
    return {"ticket": f"support-{ctx.run_id[:8]}", "about": ctx.input["failed_step"]}
