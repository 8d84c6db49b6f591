"""The keys of a KV bucket, read in one stream-info request; one key's kept history.

nats-py's `KeyValue.keys()` watches the bucket with an ordered push consumer and decides it
has seen every key when the consumer's info says nothing is pending and nothing was handed
to the subscription yet. When the server has already pushed the keys but the subscription
has not counted them, it ends at once with no keys (`NoKeysError`): a full bucket listed as
empty, seen on a loaded machine. The stream's per-subject counts (`STREAM.INFO` with a
subjects filter) have no such race, cost one request and make no consumer.

A key's history (`kv_history`) has the same race through `KeyValue.history()`; it is read
here message by message (a next-by-subject get each), bounded by what the bucket keeps.

The listing names every key with a message in the stream, deleted ones too (their last
message is the delete marker until the bucket's history drops it): callers read each key
and skip what `kv.get` reports deleted or empty, as they would a key deleted meanwhile.
"""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KV_OP, KeyValue

from dagnats.runtime.settings import kv_keys_listed_max


async def kv_keys(js: JetStreamContext, bucket: str, prefix: str = "") -> list[str]:
    """The keys of `bucket` starting with `prefix` (a whole dotted token, or ""), sorted, at
    most kv_keys_listed_max; [] when the bucket does not exist."""
    assert not prefix or not prefix.endswith("."), "prefix names whole tokens"
    pattern = f"$KV.{bucket}.{prefix}.>" if prefix else f"$KV.{bucket}.>"
    try:
        info = await js.stream_info(f"KV_{bucket}", subjects_filter=pattern)
    except nats.js.errors.NotFoundError:
        return []
    start = len(f"$KV.{bucket}.")
    keys = sorted(subject[start:] for subject in (info.state.subjects or {}))
    return keys[:kv_keys_listed_max]


async def kv_history(
    js: JetStreamContext, bucket: str, key: str, kept_max: int
) -> list[KeyValue.Entry]:
    """The kept entries of `key`, oldest first (delete and purge markers included, with an
    empty value and their operation), at most `kept_max` (the bucket's history); [] when
    the key has none or the bucket does not exist."""
    assert kept_max >= 1, kept_max
    stream, subject = f"KV_{bucket}", f"$KV.{bucket}.{key}"
    entries: list[KeyValue.Entry] = []
    seq = 1
    for _ in range(kept_max + 1):  # the bucket keeps at most kept_max: one more read ends it
        try:
            message = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            break
        assert message.seq is not None and message.seq >= seq, (message.seq, seq)
        operation = (message.headers or {}).get(KV_OP)
        entry = KeyValue.Entry(
            bucket=bucket, key=key, value=message.data or b"", revision=message.seq,
            delta=None, created=None, operation=operation,
        )  # fmt: skip
        entries.append(entry)
        seq = message.seq + 1
    return entries[-kept_max:]


__all__ = ["kv_history", "kv_keys"]
