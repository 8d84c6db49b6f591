"""A lease refresh whose write went through but whose answer was lost (dagnats/runtime/lease.py
`Lease.refresh`), against a real nats-server: the next refresh finds the lease one revision on,
holding this owner's value, and keeps it (it used to count it lost, so a partition's owner
dropped a partition nobody could take until the value expired, stalling its runs for a TTL).
A value of another owner, or none, is still a lost lease."""

from __future__ import annotations

from nats.js import JetStreamContext

from dagnats.runtime.lease import Lease
from dagnats.runtime.resources import LEASES_BUCKET


async def test_a_refresh_that_went_through_unanswered_keeps_the_lease(
    private_js: JetStreamContext,
) -> None:
    lease = Lease(private_js, "answer.lost", owner="owner-a")
    assert await lease.acquire()
    kv = await private_js.key_value(LEASES_BUCKET)
    assert lease.revision is not None
    landed = await kv.update("answer.lost", b"owner-a", last=lease.revision)  # (its answer lost)

    assert await lease.refresh(), "the lease is still this owner's"
    assert lease.held() and lease.revision == landed
    assert await lease.refresh(), "and renewed by the next refresh"
    assert lease.revision is not None and lease.revision > landed
    assert (await kv.get("answer.lost")).value == b"owner-a"


async def test_a_lease_another_owner_took_is_lost(private_js: JetStreamContext) -> None:
    lease = Lease(private_js, "taken", owner="owner-a")
    assert await lease.acquire()
    kv = await private_js.key_value(LEASES_BUCKET)
    held_at = lease.revision
    assert held_at is not None
    await kv.update("taken", b"owner-b", last=held_at)

    assert not await lease.refresh()
    assert not lease.held() and lease.revision is None
    await kv.delete("taken")
    assert not await lease.refresh(), "a lost lease stays lost"
