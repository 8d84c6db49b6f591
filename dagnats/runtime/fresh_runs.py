"""Which commands the engine may decide on a run it takes as new without reading its history.

A root run's first delivered `StartRun` almost always starts a run that has no history yet;
reading the run's last message first (one direct get) only to learn that is a round trip on
the path from `Client.start` to the run's first decision. The engine instead decides such a
start on the empty state and appends it under the expected last sequence 0: when the run does
have history, the append is refused as a conflict and the engine folds the run's history and
decides again, as it always did (OCC on every append; nothing appended twice).

Only a first delivery (a redelivered start may find its own decision stored: the ordinary
path decides it to "ignored" and issues its effects again), of a root run (a child's or a
successor's repeated start reports again to its parent: `kernel.react.repeated`), whose
workflow has no admission rules (they read the run's state before deciding).

One case remains where the two ways differ, and only in what is issued again. JetStream
checks a message's id (Nats-Msg-Id) for a duplicate before its expected last subject
sequence: the very same start (same bytes, so the same id) decided again while the start's
decision is still within the history stream's duplicate window gets the stored decision's
sequence back (`log.append` takes it as its own), even when the run has later messages, not
only when that decision is its only one; its effects (the first tasks, under their message
ids) are then issued again, as for a redelivery, where the ordinary path issued nothing.
Correctness holds: the run's next append still conflicts on its expected sequence, a stale
do-nothing decision is caught by `_moved` (dagnats/runtime/engine.py), and the tasks issued
again are deduplicated by the task stream's own window.
This module reads a command; it does no I/O.
"""

from __future__ import annotations

from kernel.commands import AnyCommand, StartRun


def fresh_start(command: AnyCommand, deliveries: int) -> bool:
    """Whether the engine may decide `command` on an uncached run taken as new."""
    return (
        isinstance(command, StartRun)
        and deliveries == 1
        and command.parent_run_id is None
        and command.continued_from is None
        and command.workflow.admission is None
    )
