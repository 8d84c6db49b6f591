"""`Client`: register workflows, start, inspect, wait for and cancel runs.

```python
async with await Client.connect() as client:
    await client.register_workflow(Path("examples/order/workflow.json").read_bytes())
    run_id = await client.start("order", {"order_id": "A-1"})
    state = await client.wait(run_id, timeout_s=60)
```

Every read of a run folds its history (the only source of truth); writes are commands to the
engine, stamped here with the time and a seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import msgspec
import nats.errors
import nats.js.errors
from msgspec.structs import replace

from dagnats import json_input
from dagnats.audit import AuditReport, Decide, audit_history
from dagnats.client import approvals as client_approvals
from dagnats.client import chains as client_chains
from dagnats.client import watches as client_watches
from dagnats.client import workflows as client_workflows
from dagnats.client.approvals import PendingApproval
from dagnats.client.errors import (
    RunExistsError,
    RunFinishedError,
    RunNotFoundError,
    WaitTimeoutError,
)
from dagnats.client.live_watch import LiveWatch, open_watch
from dagnats.client.sending import send_command
from dagnats.client.watches import ClosingWatches, ParkedWatches, Watch
from dagnats.input_schema import check_input
from dagnats.runtime import triggers_managed
from dagnats.runtime.clock import new_seed, now_ms
from dagnats.runtime.connection import Connection
from dagnats.runtime.credentials import TlsFiles
from dagnats.runtime.external_events import JetStreamEvents
from dagnats.runtime.history_guard import check_history
from dagnats.runtime.parked import decode_message
from dagnats.runtime.projector import KvSnapshotStore, load_state, open_database
from dagnats.runtime.raw_get import first_message
from dagnats.runtime.resources import COMMANDS_STREAM, check_run_id, run_commands_filter
from dagnats.runtime.roles import Role
from dagnats.runtime.triggers_plan import check_zones
from kernel import codec, limits
from kernel.commands import AnyCommand, CancelRun, ScheduleRun, SendSignal, StartGated, StartRun
from kernel.decide import decide
from kernel.effects import in_life
from kernel.errors import DagnatsError, PayloadTooLargeError, WorkflowInvalidError
from kernel.events import ChildStarted, Decision
from kernel.state import RunState, is_terminal
from kernel.step_states import ApprovalState
from kernel.workflow import WorkflowDef, parse_workflow, validate_workflow
from projections.sqlite import stored_rows

log = logging.getLogger("dagnats.client")
start_wait_s_default = 10.0
started_runs_remembered_max = 10_000  # run ids a Client remembers starting (for `wait`)
children_listed_max = 1_000
workflow_revisions_max = 16


class ChildLink(msgspec.Struct, frozen=True, kw_only=True):
    """A child run started by a `sub_workflow` step, and its status."""

    step_id: str
    child_run_id: str
    workflow: str
    detached: bool
    status: str


class Client:
    """Talks to a DagNats deployment over NATS."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._snapshots = KvSnapshotStore(connection.js)
        # Runs this client started, newest last (a bounded LRU): `wait` waits for their
        # history to appear instead of calling them unknown.
        self._started: OrderedDict[str, None] = OrderedDict()
        self._watches = ParkedWatches()  # of started runs, for their `wait`
        self._closing = ClosingWatches()  # of ended waits (their consumers' deletes)

    @classmethod
    async def connect(
        cls,
        url: str | None = None,
        *,
        task_ack_wait_ms: int | None = None,
        role: Role = "client",
        creds: Path | None = None,
        tls: TlsFiles | None = None,
        data_dir: Path | None = None,
    ) -> Client:
        """Connect to the NATS server of a `dagnats serve` (or a cluster).

        Args:
            url: the NATS URL; default `$DAGNATS_NATS_URL`, else the URL the local
                `dagnats serve` wrote into its data dir.
            role: `client`, `approver` or `worker` (a credential file's own role wins).
            creds: a credential file (default `$DAGNATS_CREDS`, else the role's file in the
                local serve's data dir); tls: client TLS files for an external NATS.

        Raises:
            HistoryStreamGoneError: the history stream was deleted (one clear line).
        """
        connection = await Connection.open(
            url, task_ack_wait_ms=task_ack_wait_ms, role=role, creds=creds, tls=tls,
            data_dir=data_dir,
        )  # fmt: skip
        try:
            if connection.role != "worker":  # a worker may not read the history stream
                await check_history(connection.js)
        except BaseException:
            await connection.close()
            raise
        return cls(connection)

    async def close(self) -> None:
        await self._watches.close()
        await self._closing.wait()
        await self.connection.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- workflows -----------------------------------------------------------------------

    @staticmethod
    def validate_workflow(source: bytes | str | object) -> WorkflowDef:
        """Parse and validate a definition offline (no server).

        Raises:
            WorkflowInvalidError: every problem, each naming its path, value and rule.
        """
        json_input.check_workflow_keys(source)
        return check_zones(parse_workflow(source))

    async def register_workflow(self, source: WorkflowDef | bytes | str | object) -> int:
        """Store a workflow definition under its name; returns its new revision (1, 2, 3 ...
        for each name).

        Raises:
            WorkflowInvalidError: every problem of the definition (nothing is stored).
        """
        if isinstance(source, WorkflowDef):
            workflow = _checked(source)
        else:
            json_input.check_workflow_keys(source)
            workflow = check_zones(parse_workflow(source))
        await triggers_managed.check_route_conflicts(self.connection.js, workflow)
        return await client_workflows.register(self, workflow)

    async def get_workflow(self, name: str, revision: int | None = None) -> WorkflowDef:
        """The registered definition (the latest revision unless one is given).

        Raises:
            WorkflowNotFoundError: no workflow of that name.
            WorkflowRevisionNotFoundError: no such revision of it.
            StoredWorkflowError: the stored entry is not a definition (one line).
        """
        return await client_workflows.get(self, name, revision)

    async def workflow_revisions(self, name: str) -> list[int]:
        """The workflow's revisions kept (at most the bucket's history), oldest first."""
        return (await client_workflows.revision_numbers(self, name))[-workflow_revisions_max:]

    async def list_workflows(self) -> list[str]:
        return await client_workflows.list_names(self)

    # -- runs ----------------------------------------------------------------------------

    async def start(
        self,
        workflow: str | WorkflowDef,
        input: object = None,
        *,
        run_id: str | None = None,
        wait_started_s: float = start_wait_s_default,
        run_at_ms: int | None = None,
    ) -> str:
        """Start a run; idempotent on a caller-given `run_id` (the same start twice is one run).
        With `run_at_ms` (ms since the epoch) the run is recorded `scheduled` and starts then,
        through a durable timer (README "Admission and flow control").

        Raises:
            WorkflowNotFoundError: no workflow of that name is registered.
            WorkflowInvalidError: a `WorkflowDef` given breaks the workflow rules (checked by
                `kernel.workflow.validate_workflow` before anything is published; the engine
                would set the start aside as a dead letter).
            PayloadTooLargeError: the input is over the payload limit.
            JsonInputError: the input holds NaN, Infinity or bytes, or nests too deep.
            RunExistsError: `run_id` names a run of another workflow or input.
            InputSchemaError: the input does not meet the workflow's input_schema (no run).
        """
        given = run_id is not None
        run_id = check_run_id(run_id or uuid.uuid4().hex)
        json_input.check_value(input, "input")  # before any round trip: a refusal costs none
        data = msgspec.json.encode(input)
        if len(data) > limits.payload_bytes_max:
            raise PayloadTooLargeError("input", len(data), limits.payload_bytes_max)
        fetching = (
            client_watches.ready(_checked(workflow)) if isinstance(workflow, WorkflowDef)
            else self.get_workflow(workflow)
        )  # fmt: skip
        # Its round trips at once (client/watches.in_parallel): the definition, whether a
        # caller's id names a run already (a generated one names none), a new run's watch.
        opening = asyncio.ensure_future(open_watch(self.connection.js, run_id, stored=False))
        try:
            if given:
                definition, existing = await client_watches.in_parallel(
                    fetching, self._first_decision(run_id)
                )
            else:  # (no task made for a side with nothing to ask)
                definition, existing = await fetching, None
            check_input(definition, data)  # refused here, with the schema errors: no run
            # A run carries its workflow without its triggers (their secrets stay out of
            # history, as in the trigger service: dagnats/runtime/triggers.py).
            workflow_run = replace(definition, triggers=msgspec.UNSET)
            command = StartRun(run_id=run_id, at_ms=now_ms(), seed=new_seed(),
                               workflow=workflow_run, input=msgspec.Raw(data))  # fmt: skip
            new_run = existing is None
            if new_run:
                sent: StartRun | ScheduleRun = command
                if run_at_ms is not None:
                    sent = ScheduleRun(run_id=run_id, at_ms=command.at_ms, start=command,
                                       run_at_ms=run_at_ms)  # fmt: skip
                existing = await self._send_start(sent, wait_started_s, opening)
        except BaseException:
            await client_watches.discard(opening, self._closing)  # (a start that failed)
            raise
        if not new_run:  # the run exists: its watch is closed in the background
            await client_watches.discard(opening, self._closing)
        if existing is not None and not _same_start(existing, command):
            raise RunExistsError(run_id)
        return run_id

    async def _send_start(
        self, command: StartRun | ScheduleRun, wait_started_s: float,
        opening: asyncio.Future[Watch],
    ) -> Decision | None:  # fmt: skip
        """Send a StartRun while its watch opens (the watch reads the run's history from its
        first message, so it misses nothing appended before its consumer exists); the run's
        first decision (within `wait_started_s`), and the watch parked for `wait` (one
        consumer for both)."""
        # `start:<run>~<life>`: a retried send is one message; a run deleted and started
        # again under its id (a new seed) is another, even within the duplicate window.
        seed = command.seed if isinstance(command, StartRun) else command.start.seed
        run_id = command.run_id
        await self.send(command, msg_id=in_life(f"start:{run_id}", seed))
        self._remember_started(run_id)
        try:  # (shielded: a caller cancelled here has it closed once open, by `start`)
            watch = await asyncio.shield(opening)
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as error:
            # Sent, unconfirmed: its `wait` opens a watch of its own.
            log.info("run %s: started; its watch did not open (%s)", run_id, error)
            return None
        try:
            first = None
            if wait_started_s > 0:
                first = await watch.next(time.monotonic() + wait_started_s)
        except BaseException:
            await watch.close()
            raise
        if first is not None:
            watch.seen.append(first)
        await self._watches.park(watch)
        return first[1] if first is not None else None

    def _remember_started(self, run_id: str) -> None:
        self._started[run_id] = None
        self._started.move_to_end(run_id)
        while len(self._started) > started_runs_remembered_max:
            self._started.popitem(last=False)
        assert len(self._started) <= started_runs_remembered_max

    async def _command_waiting(self, run_id: str) -> bool:
        """Whether a command for the run waits in the commands stream (not yet handled by an
        engine): a run started elsewhere (another process) whose start is still queued."""
        commands = self.connection.commands
        subject = run_commands_filter(run_id, await commands.partitions.get())
        try:
            await self.connection.js.get_last_msg(COMMANDS_STREAM, subject)
        except nats.js.errors.NotFoundError:
            return False
        return True

    async def send(self, command: AnyCommand, *, msg_id: str | None = None) -> None:
        """Publish a command for the engine (deduplicated on `msg_id` when given)."""
        msg_id = msg_id or f"{type(command).__name__}:{command.run_id}:{uuid.uuid4().hex}"
        await send_command(self.connection.commands, command.run_id, codec.encode(command), msg_id)

    async def _first_decision(self, run_id: str) -> Decision | None:
        """The run's first decision (None: it has no history): one get, read raw."""
        first = await first_message(self.connection.js, run_id)
        return None if first is None else decode_message(run_id, *first)

    async def history(self, run_id: str) -> AsyncGenerator[tuple[int, Decision], None]:
        """Every history message of the run, in order, as (stream sequence, decision)."""
        async for seq, data in self.connection.history.read(check_run_id(run_id)):
            yield seq, decode_message(run_id, seq, data)

    async def get_run(self, run_id: str) -> RunState:
        """The run's state, folded from its history.

        Raises:
            RunNotFoundError: the run has no history.
        """
        # snapshot + tail (runtime.projector.load_state); the whole history without a snapshot
        # an undecodable message raises RunParkedError naming the run and the sequence
        state, _ = await load_state(self.connection.history, self._snapshots, check_run_id(run_id))
        if state.status == "new":
            raise RunNotFoundError(run_id)
        return state

    async def history_bytes(self, run_id: str) -> AsyncIterator[tuple[int, bytes]]:
        """Every history message of the run as (stream sequence, the exact stored bytes)."""
        async for seq, data in self.connection.history.read(check_run_id(run_id)):
            yield seq, data

    async def audit(
        self,
        run_id: str,
        *,
        sqlite_path: Path | None = None,
        decide_function: Decide = decide,
    ) -> AuditReport:
        """Replay-audit a run: re-decide every recorded command and fold with the current
        code, and compare its snapshot and (when `sqlite_path` exists) its SQLite rows.

        Raises:
            RunNotFoundError: the run has no history.
        """
        messages = [item async for item in self.history_bytes(run_id)]
        if not messages:
            raise RunNotFoundError(run_id)
        snapshot = await self._snapshots.get(run_id)
        rows = None
        if sqlite_path is not None and sqlite_path.exists():
            db = open_database(sqlite_path, readonly=True)
            try:
                if "runs" in db.table_names():
                    rows = stored_rows(db, run_id)
            finally:
                db.close()
        return audit_history(
            run_id, messages, decide_function=decide_function, snapshot=snapshot, rows=rows
        )

    async def watch(
        self, run_id: str, *, timeout_s: float, after_seq: int = 0
    ) -> AsyncGenerator[tuple[int, Decision], None]:
        """History messages of the run as they are appended, until `timeout_s` passes (a
        watch, as `wait` folds: it goes on across a reconnect, and closes in the background).

        Raises:
            RunParkedError: a message does not decode (naming the run and the sequence).
        """
        deadline = time.monotonic() + timeout_s
        watch = await open_watch(self.connection.js, check_run_id(run_id), after_seq)
        try:
            while (item := await watch.next(deadline)) is not None:
                yield item
        finally:
            await self._close(watch)

    async def wait(
        self,
        run_id: str,
        *,
        timeout_s: float = 60.0,
        on_update: Callable[[RunState, Decision], None] | None = None,
        follow: bool = False,
    ) -> RunState:
        """Wait until the run ends; returns its final state. With `follow`, a run that
        continued as new is followed to the end of its chain (its last run's state).

        A run with no history yet is waited for (within `timeout_s`) when this client started
        it or a command for it still waits in the commands stream (its start not handled yet:
        engines busy, or a start sent by another process); any other id with no history is
        unknown at once.

        Raises:
            RunNotFoundError: the run has no history, and is neither started by this client
                nor has a command waiting (at once); or it still has no history when the
                wait ends.
            WaitTimeoutError: the run did not end within `timeout_s`.
            DagnatsError: `timeout_s` is not a finite number above 0.
        """
        if not timeout_s > 0 or not math.isfinite(timeout_s):  # NaN fails both
            raise DagnatsError(
                f"timeout_s {timeout_s!r} must be a finite number of seconds above 0"
            )
        deadline = time.monotonic() + timeout_s
        watch = self._watches.take(check_run_id(run_id))  # start's watch, when it made one
        known_seq = 0
        if watch is None:
            # An end before the history's current last message is not the run's end: a
            # reopened run (`dagnats run retry`) ended and went on (kernel.reopen). One read
            # says that and whether the run has history; else it exists when this client
            # started it or a command for it waits.
            known_seq = await self.connection.history.last_seq(run_id)
            if not (known_seq or run_id in self._started or await self._command_waiting(run_id)):
                raise RunNotFoundError(run_id)
            watch = await open_watch(self.connection.js, run_id)
        try:
            state = await client_watches.fold_until_end(watch, deadline, on_update, known_seq)
        finally:
            await self._close(watch)
        if is_terminal(state) and follow:
            return await client_chains.follow(self, state, timeout_s=timeout_s, on_update=on_update)
        if is_terminal(state):
            return state
        if state.status == "new":
            raise RunNotFoundError(run_id)
        raise WaitTimeoutError(run_id, timeout_s, state)

    async def _close(self, watch: Watch) -> None:
        """Close a watch whose caller has its answer: a live watch now (an unsubscribe, no
        round trip), a consumer in the background (the answer need not wait for its delete)."""
        await (watch.close() if isinstance(watch, LiveWatch) else self._closing.close_later(watch))

    async def lineage(self, run_id: str) -> list[client_chains.ChainLink]:
        """The continue-as-new chain of a run, root first (a single run is a chain of one)."""
        return await client_chains.lineage(self, run_id)

    # -- approvals -----------------------------------------------------------------------

    async def approve(
        self, run_id: str, step_id: str, *, data: object = None, comment: str = "",
        by: str = "", key: str = "",
    ) -> ApprovalState:  # fmt: skip
        """Approve a pending approval: its step completes with `data`. Returns the resolved
        approval (who, when).

        Raises:
            RunNotFoundError, ApprovalNotFoundError: nothing to approve.
            ApprovalResolvedError: already resolved (the message says by whom and when).
        """
        return await client_approvals.resolve(
            self, run_id, step_id, "approve", data=data, comment=comment, by=by, key=key
        )

    async def reject(
        self, run_id: str, step_id: str, *, comment: str = "", data: object = None,
        by: str = "", key: str = "",
    ) -> ApprovalState:  # fmt: skip
        """Reject a pending approval: its step fails for good (on_failure and compensation
        apply). Raises as `approve`."""
        return await client_approvals.resolve(
            self, run_id, step_id, "reject", data=data, comment=comment, by=by, key=key
        )

    async def pending_approvals(self, limit: int = 1_000) -> list[PendingApproval]:
        """Approvals waiting for a decision across unfinished runs, oldest first."""
        return await client_approvals.pending_approvals(self, limit)

    async def cancel(self, run_id: str, reason: str = "") -> None:
        """Ask the engine to cancel a run.

        Raises:
            RunNotFoundError: no such run.
            RunFinishedError: the run has already ended.
        """
        state = await self.get_run(run_id)
        if is_terminal(state):
            raise RunFinishedError(run_id, state.status)
        command = CancelRun(run_id=run_id, at_ms=now_ms(), seed=new_seed(), reason=reason)
        await self.send(command, msg_id=in_life(f"cancel:{run_id}", state.seed))

    async def signal(self, run_id: str, name: str, payload: object = None) -> None:
        """Send a named signal with a JSON payload to a run (recorded in its history, in order).

        Raises:
            RunNotFoundError: no such run.
            RunFinishedError: the run has already ended.
            PayloadTooLargeError: the payload is over `limits.signal_bytes_max`.
        """
        json_input.check_value(payload, "signal payload")
        data = msgspec.json.encode(payload)
        if len(data) > limits.signal_bytes_max:
            raise PayloadTooLargeError("signal payload", len(data), limits.signal_bytes_max)
        state = await self.get_run(run_id)
        if is_terminal(state):
            raise RunFinishedError(run_id, state.status)
        signal_id = uuid.uuid4().hex  # the signal's identity: recorded once however delivered
        command = SendSignal(
            run_id=run_id, at_ms=now_ms(), seed=new_seed(), name=name, payload=msgspec.Raw(data),
            signal_id=signal_id,
        )  # fmt: skip
        await self.send(command, msg_id=f"signal:{run_id}:{signal_id}")

    async def publish_event(
        self, name: str, payload: object = None, *, event_id: str | None = None
    ) -> int:
        """Publish an external event by name (not to a run): every run waiting for `name`
        (a `wait_for_event` step, a workflow's `cancel_on`) gets it. Returns its sequence.

        Args:
            event_id: an idempotency key: the same id again (within two minutes) is one event.
        Raises:
            PayloadTooLargeError: the payload is over `limits.event_bytes_max`.
            SubjectTokenError: `name` is not 1..128 of A-Z a-z 0-9 '_' '-' (dotted).
            DagnatsError: no events stream (is `dagnats serve` running?).
        """
        json_input.check_value(payload, "event payload")
        feed = JetStreamEvents(self.connection.js)
        try:
            return await feed.publish(name, payload, event_id=event_id)
        except (nats.errors.NoRespondersError, nats.js.errors.NotFoundError):
            raise DagnatsError(
                f"cannot publish event {name!r}: no events stream (start `dagnats serve` first)"
            ) from None

    async def children(self, run_id: str) -> list[ChildLink]:
        """The child runs a run started (`child.started` in its history), in order, with
        their status now ("starting" while the child has no history yet)."""
        links: list[ChildLink] = []
        async for _, decision in self.history(run_id):
            for event in decision.events:
                if isinstance(event, ChildStarted):
                    status = "starting"
                    with contextlib.suppress(RunNotFoundError):
                        status = (await self.get_run(event.child_run_id)).status
                    links.append(
                        ChildLink(
                            step_id=event.step_id,
                            child_run_id=event.child_run_id,
                            workflow=event.workflow,
                            detached=event.detached,
                            status=status,
                        )
                    )
        return links[:children_listed_max]

    async def list_runs(self, limit: int = 100) -> list[RunState]:
        """The most recent runs' states (folded from history), newest first, at most `limit`."""
        assert 1 <= limit <= 10_000, f"limit {limit} out of 1..10000"
        run_ids = await self.connection.history.list_runs(limit=10_000)
        slots = asyncio.Semaphore(32)

        async def one(run_id: str) -> RunState | None:
            async with slots:
                try:
                    return await self.get_run(run_id)
                except (RunNotFoundError, DagnatsError):
                    return None

        states = [s for s in await asyncio.gather(*(one(r) for r in run_ids)) if s is not None]
        states.sort(key=lambda s: s.started_at_ms, reverse=True)
        return states[:limit]


def _checked(workflow: WorkflowDef) -> WorkflowDef:
    """The definition if it keeps every workflow rule.

    Raises:
        WorkflowInvalidError: listing every problem (paths, values, rules).
    """
    problems = validate_workflow(workflow)
    if problems:
        raise WorkflowInvalidError(problems, workflow=workflow.name)
    return check_zones(workflow)


def _same_start(decision: Decision, command: StartRun) -> bool:
    first = decision.command
    if isinstance(first, StartGated | ScheduleRun):  # admission's forms of a start
        first = first.start
    return (
        isinstance(first, StartRun)
        and first.workflow == command.workflow
        and first.input == command.input
    )
