"""The keys of a KV bucket, read in one stream-info request.

nats-py's `KeyValue.keys()` watches the bucket with an ordered push consumer and decides it
has seen every key when the consumer's info says nothing is pending and nothing was handed
to the subscription yet. When the server has already pushed the keys but the subscription
has not counted them, it ends at once with no keys (`NoKeysError`): a full bucket listed as
empty, seen on a loaded machine. The stream's per-subject counts (`STREAM.INFO` with a
subjects filter) have no such race, cost one request and make no consumer.

The listing names every key with a message in the stream, deleted ones too (their last
message is the delete marker until the bucket's history drops it): callers read each key
and skip what `kv.get` reports deleted or empty, as they would a key deleted meanwhile.
"""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext

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


__all__ = ["kv_keys"]
