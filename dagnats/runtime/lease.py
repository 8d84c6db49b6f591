"""Leases: one owner at a time for a named piece of work (a projection), over JetStream KV.

A lease is one key of the `dagnats_leases` bucket, whose TTL (the stream's max age,
`settings.lease_ttl_ms`) removes a value nobody rewrote in time. Taking it is a KV `create`
(it fails while the key holds a value); keeping it is a KV `update` checked against the
revision the owner last wrote, every `settings.lease_refresh_interval_ms`. An owner that
stops refreshing (killed, hung, cut off) loses it when its value expires, and the next
`create` of a standby wins; an owner whose refresh finds another revision knows it lost. No
protocol beyond that revision check: JetStream orders the writes and expires the value.

An owner believes it holds the lease until `ttl` after it *sent* its last successful write
(before the server could have stamped it), so its belief ends no later than the server's
value. Work done under a lease must still be safe if two owners briefly overlap (here: the
snapshot checkpoint is written under a revision check too).

This module may read and write the leases bucket only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from dagnats.runtime import settings
from dagnats.runtime.resources import LEASES, LEASES_BUCKET, ensure_bucket
from kernel.errors import DagnatsError

log = logging.getLogger("dagnats.lease")


def new_owner_id() -> str:
    """An owner id naming this process (host pid + random), unique per lease holder."""
    return f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Lease:
    """The lease on `key`, held (or not) by `owner`."""

    def __init__(
        self,
        js: JetStreamContext,
        key: str,
        *,
        owner: str | None = None,
        ttl_ms: int = settings.lease_ttl_ms,
    ) -> None:
        assert 0 < settings.lease_refresh_interval_ms * 3 <= ttl_ms, ttl_ms
        self.js = js
        self.key = key
        self.owner = owner or new_owner_id()
        self.ttl_s = ttl_ms / 1000
        self.revision: int | None = None  # of our last successful write; None: not held
        self.valid_until = 0.0  # monotonic: our belief in holding it ends then
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            await ensure_bucket(self.js, LEASES, replicas=1)
            self._kv = await self.js.key_value(LEASES_BUCKET)
        return self._kv

    def held(self) -> bool:
        """Whether this owner may act: it holds the lease and its last write is fresh."""
        return self.revision is not None and time.monotonic() < self.valid_until

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it; True when this owner holds it now."""
        if self.held():
            return True
        sent = time.monotonic()
        try:
            kv = await self._bucket()
            revision = await kv.create(self.key, self.owner.encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            return False  # another owner's value is there
        except (nats.errors.Error, TimeoutError) as error:
            self._kv = None  # the bucket may be gone: look it up (or create it) next time
            log.debug("lease %s: not taken (%s)", self.key, error)
            return False
        self._note(revision, sent)
        return True

    async def refresh(self) -> bool:
        """Rewrite the lease under the revision this owner last wrote; False when it is lost
        (another owner took it, or it expired, or the write failed after it went stale)."""
        if self.revision is None:
            return False
        sent = time.monotonic()
        try:
            kv = await self._bucket()
            revision = await kv.update(self.key, self.owner.encode(), last=self.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return await self._adopt(kv)
        except (nats.errors.Error, TimeoutError) as error:
            self._kv = None
            log.debug("lease %s: not refreshed (%s)", self.key, error)
            return self.held()  # a failed write: held until the last good one goes stale
        self._note(revision, sent)
        return True

    async def _adopt(self, kv: KeyValue) -> bool:
        """The lease moved past the revision this owner knows: if the value there is still
        this owner's (an earlier write of ours went through but its answer was lost), keep
        it under that revision, held until the last answered write goes stale (the next
        refresh renews it); else it is lost. Owner ids are unique, so the value proves it."""
        assert self.revision is not None
        try:
            entry = await kv.get(self.key)
        except (nats.errors.Error, TimeoutError):  # (KeyNotFoundError: it expired)
            entry = None
        ours = entry is not None and entry.value == self.owner.encode()
        if entry is None or not ours or (entry.revision or 0) <= self.revision:
            self.revision = None
            return False
        log.info("lease %s: a refresh whose answer was lost went through; kept", self.key)
        self.revision = entry.revision
        return self.held()

    def _note(self, revision: int, sent: float) -> None:
        assert revision > 0, revision
        self.revision = revision
        self.valid_until = sent + self.ttl_s

    async def release(self) -> None:
        """Give the lease up at once (a clean stop), so a standby takes over without waiting
        for the TTL; a failure leaves it to expire."""
        revision, self.revision = self.revision, None
        if revision is None:
            return
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await (await self._bucket()).delete(self.key, last=revision)

    async def holder(self) -> str | None:
        """Who holds the lease now (None: nobody, or unknown)."""
        try:
            entry = await (await self._bucket()).get(self.key)
        except (nats.errors.Error, TimeoutError):
            return None
        return entry.value.decode() if entry.value else None


class LeaseLostError(DagnatsError):
    """This owner no longer holds the lease on `key` (it expired or another owner took it)."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"lease {key!r} is lost: another owner runs it now")
