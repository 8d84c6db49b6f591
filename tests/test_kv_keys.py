"""Listing a KV bucket's keys from the stream's per-subject counts (runtime/kv_keys): every
key, by prefix, deleted ones left for the caller's read, [] for a missing bucket; and the
listing sees keys the moment their puts return, round after round (nats-py's own
`keys()` could list a full bucket as empty under load)."""

from __future__ import annotations

import asyncio

import nats.js.errors
import pytest
from nats.js import JetStreamContext

from dagnats.runtime.kv_keys import kv_history, kv_keys


async def test_every_key_by_prefix_and_none_for_a_missing_bucket(js: JetStreamContext) -> None:
    assert await kv_keys(js, "dagnats_test_absent") == []
    kv = await js.create_key_value(bucket="dagnats_test_keys", history=1)
    assert await kv_keys(js, "dagnats_test_keys") == []
    for key in ("engine.a", "engine.b", "engineer", "x.y.z"):
        await kv.put(key, b"1")
    assert await kv_keys(js, "dagnats_test_keys") == ["engine.a", "engine.b", "engineer", "x.y.z"]
    assert await kv_keys(js, "dagnats_test_keys", "engine") == ["engine.a", "engine.b"]
    assert await kv_keys(js, "dagnats_test_keys", "x.y") == ["x.y.z"]
    await kv.delete("engine.a")
    listed = await kv_keys(js, "dagnats_test_keys", "engine")
    assert "engine.b" in listed
    for key in listed:  # a deleted key may be listed; reading it says it is deleted
        if key == "engine.a":
            with pytest.raises(nats.js.errors.KeyNotFoundError):
                await kv.get(key)


async def test_keys_are_listed_as_soon_as_they_are_written(js: JetStreamContext) -> None:
    kv = await js.create_key_value(bucket="dagnats_test_rounds", history=1)
    for round_ in range(50):
        names = [f"r{round_}.k{i}" for i in range(4)]
        await asyncio.gather(*(kv.put(name, b"v") for name in names))
        assert await kv_keys(js, "dagnats_test_rounds", f"r{round_}") == sorted(names)


async def test_a_keys_history_oldest_first_with_its_markers(js: JetStreamContext) -> None:
    kv = await js.create_key_value(bucket="dagnats_test_history", history=4)
    assert await kv_history(js, "dagnats_test_history", "k", 4) == []
    assert await kv_history(js, "dagnats_test_absent_history", "k", 4) == []
    for value in (b"1", b"2"):
        await kv.put("k", value)
        await kv.put("other", value)
    await kv.delete("k")
    for value in (b"3", b"4", b"5"):
        await kv.put("k", value)
    entries = await kv_history(js, "dagnats_test_history", "k", 4)
    assert [(e.value, e.operation) for e in entries] == [
        (b"", "DEL"), (b"3", None), (b"4", None), (b"5", None)
    ]  # fmt: skip
    revisions = [e.revision or 0 for e in entries]
    assert revisions == sorted(revisions) and revisions[0] > 0
    assert [e.value for e in await kv_history(js, "dagnats_test_history", "other", 4)] == [
        b"1", b"2"
    ]  # fmt: skip
