"""Review of the merged projection tail (r10-rev3), against a real nats-server: what the lean
reads (`projector_read.read_until`, `tail`) and the shared tail do when the history they are
asked for was purged, when their server restarts, and under a burst while a batch lingers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from nats.js import JetStreamContext

from dagnats.runtime.projector_read import read_until
from dagnats.runtime.resources import HISTORY_STREAM, history_subject
from projections.base import Message

BOUND_S = 30.0


async def publish(js: JetStreamContext, count: int, tag: str) -> list[int]:
    seqs = []
    for index in range(count):
        ack = await js.publish(history_subject(f"{tag}-{index % 3}"), f"{tag}:{index}".encode())
        seqs.append(ack.seq)
    return seqs


async def test_read_until_a_purged_range_ends_with_nothing(private_js: JetStreamContext) -> None:
    """read_until's contract: fewer messages when the rest was deleted. With every message
    after `after_seq` purged (and none appended since), the read must end, not stall."""
    seqs = await publish(private_js, 20, "gone")
    await private_js.purge_stream(HISTORY_STREAM)
    read = [m async for m in read_until(private_js, 0, seqs[-1])]
    assert read == []


async def test_read_until_a_range_purged_behind_kept_messages_ends(
    private_js: JetStreamContext,
) -> None:
    """Only the messages after the reader's start are purged (a run's subject): the read of
    them ends with nothing."""
    kept = await publish(private_js, 10, "kept")
    gone = [(await private_js.publish(history_subject("gone-run"), b"x")).seq for _ in range(10)]
    await private_js.purge_stream(HISTORY_STREAM, subject=history_subject("gone-run"))
    read = await asyncio.wait_for(_collect(read_until(private_js, kept[-1], gone[-1])), BOUND_S)
    assert read == []


async def _collect(messages: AsyncGenerator[Message, None]) -> list[Message]:
    return [m async for m in messages]
