"""One live watch of a run's history, shared by `Client.start` and `Client.wait`.

`start` opens the watch before it sends a new run's StartRun (so the first decision cannot be
missed), reads that first decision from it, and leaves it open for `wait`: starting and
waiting for a new run costs one ordered consumer, not one each. The decisions `start` read
are kept (`seen`) and given to `wait` first, so `wait` folds the whole history.

`ParkedWatches` keeps the watches of the runs started and not yet waited for, a bounded
number (`parked_watches_max`): the oldest is closed when one more comes (its `wait` then opens
a watch of its own). This module subscribes to the history stream; it writes nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from typing import Final

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

from dagnats.runtime.parked import decode_message
from dagnats.runtime.resources import HISTORY_STREAM, history_subject
from kernel.events import Decision

parked_watches_max: Final = 64  # watches of started runs kept open for their `wait`

Seen = tuple[int, Decision]


class RunWatch:
    """History messages of one run after `after_seq`, as they are appended."""

    def __init__(
        self, run_id: str, subscription: JetStreamContext.PushSubscription,
        js: JetStreamContext | None = None,
    ) -> None:  # fmt: skip
        self.run_id = run_id
        self._subscription = subscription
        self._js = js
        self.seen: list[Seen] = []  # read by `start`, handed to `wait` first
        self.closed = False

    @classmethod
    async def open(cls, js: JetStreamContext, run_id: str, after_seq: int = 0) -> RunWatch:
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after_seq + 1
        )
        subscription = await js.subscribe(
            history_subject(run_id), stream=HISTORY_STREAM, ordered_consumer=True, config=config
        )
        return cls(run_id, subscription, js)

    async def next(self, deadline: float) -> Seen | None:
        """The next decision, or None when the monotonic `deadline` passes first.

        Raises:
            RunParkedError: the message does not decode (naming the run and the sequence).
        """
        assert not self.closed, f"watch of {self.run_id} is closed"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            message = await self._subscription.next_msg(timeout=remaining)
        except (nats.errors.TimeoutError, TimeoutError):
            return None
        seq = message.metadata.sequence.stream
        return seq, decode_message(self.run_id, seq, message.data)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(nats.errors.Error):
            await self._subscription.unsubscribe()
        # Delete its consumer now: the server would keep an idle ephemeral consumer until its
        # inactivity threshold, and a stream holds at most 1,000 consumers (a client starting
        # runs quickly would reach that bound).
        consumer = getattr(self._subscription, "_consumer", None)
        if self._js is not None and isinstance(consumer, str) and consumer:
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
                await self._js.delete_consumer(HISTORY_STREAM, consumer)


class ParkedWatches:
    """Open watches of started runs, waiting for their `wait` (a bounded LRU)."""

    def __init__(self, size_max: int = parked_watches_max) -> None:
        assert size_max >= 0, size_max
        self.size_max = size_max
        self._watches: OrderedDict[str, RunWatch] = OrderedDict()

    async def park(self, watch: RunWatch) -> None:
        """Keep `watch` for its run's `wait`; close the oldest beyond the bound."""
        previous = self._watches.pop(watch.run_id, None)
        if previous is not None:
            await previous.close()
        self._watches[watch.run_id] = watch
        while len(self._watches) > self.size_max:
            _, oldest = self._watches.popitem(last=False)
            await oldest.close()
        assert len(self._watches) <= self.size_max

    def take(self, run_id: str) -> RunWatch | None:
        """The parked watch of the run (now the caller's to close), or None."""
        return self._watches.pop(run_id, None)

    async def close(self) -> None:
        while self._watches:
            _, watch = self._watches.popitem()
            await watch.close()
