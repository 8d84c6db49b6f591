"""A run's watch (what `Client.wait` folds) survives its server's restart: after a reconnect it
opens a new ordered consumer after the last message it gave (the old one may be gone with the
server; nats-py noticed only ~20 s later, so a wait across a restart stalled that long), and a
message given before is not given twice."""

from __future__ import annotations

import time
from pathlib import Path

from dagnats.client.watches import RunWatch
from dagnats.runtime.resources import history_subject
from kernel import codec
from kernel.commands import CancelRun
from kernel.decide import decide
from tests.nats_fixtures import RestartableServer, unique
from tests.test_js_publish import start_run

WAIT_S = 30.0


async def test_a_watch_goes_on_after_its_server_restarts(tmp_path: Path) -> None:
    restartable = RestartableServer(tmp_path / "nats")
    try:
        js = (await restartable.start()).jetstream()
        run_id = unique("watched")
        start, state, started = start_run(run_id)
        await js.publish(history_subject(run_id), started)
        watch = await RunWatch.open(js, run_id)
        first = await watch.next(time.monotonic() + WAIT_S)
        assert first is not None and first[1].command == start

        await restartable.restart()
        cancel = CancelRun(run_id=run_id, at_ms=2, reason="test")
        events = decide(state, cancel)
        assert isinstance(events, tuple) and events
        await js.publish(history_subject(run_id), codec.encode_decision(cancel, events))

        second = await watch.next(time.monotonic() + WAIT_S)
        assert second is not None and second[1].command == cancel, second
        assert second[0] > first[0]
        assert watch.reopened == 1
        await watch.close()
    finally:
        await restartable.close()
