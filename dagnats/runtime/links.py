"""Effects that link a run to the world beyond its own history: child runs and external events.

`RunLinks` executes `StartChild` (looks the workflow up, sends the child's `StartRun`),
`ReportToParent` (sends the parent a `RecordChild`), `CancelChild` (sends the child a
`CancelRun`) and `WatchEvents` (indexes the run under the event names it waits for, then
delivers again the events published since the time it gives). `route` tails new external
events and sends each to the runs indexed under its name as a `DeliverEvent` command.

Every command it sends carries a deterministic message id, so an effect issued twice (a resume)
sends one command, and `decide` ignores a second delivery anyway. The index is memory only:
`resume` after a restart issues `WatchEvents` again for every waiting run, rebuilding it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, assert_never

import msgspec
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from dagnats.runtime.external_events import PublishedEvent
from dagnats.runtime.protocols import CommandPublisher
from dagnats.runtime.resources import (
    WORKFLOWS_BUCKET,
    StoredWorkflowError,
    decode_stored_workflow,
)
from dagnats.runtime.settings import event_waiting_runs_max
from kernel import codec
from kernel.commands import AnyCommand, CancelRun, DeliverEvent, RecordChild, StartRun
from kernel.effects import (
    CancelChild,
    PublishNotice,
    ReportToParent,
    SendCommand,
    StartChild,
    StartContinuation,
    WatchEvents,
    in_life,
)
from kernel.errors import DagnatsError
from kernel.workflow import WorkflowDef

LinkEffect = (
    StartChild | ReportToParent | CancelChild | WatchEvents | PublishNotice | StartContinuation
    | SendCommand
)  # fmt: skip
NOTICE_SUBJECT_PREFIX = "dagnats"  # + .<topic>.<run_id>.<step_id>: steps' notices
Notify = Callable[[str, bytes], Awaitable[None]]  # a plain (core NATS) publish

log = logging.getLogger("dagnats.links")


class WorkflowSource(Protocol):
    """Registered workflows by name (the `dagnats_workflows` KV bucket)."""

    async def get_workflow(self, name: str) -> WorkflowDef | None:
        """The latest registered definition of `name`, or None."""
        ...


class EventTail(Protocol):
    async def next(self) -> PublishedEvent: ...

    async def close(self) -> None: ...


class EventFeed(Protocol):
    """External events: those since a time, and new ones live."""

    def read_since(self, name: str, since_ms: int) -> AsyncIterator[PublishedEvent]: ...

    async def open_tail(self) -> EventTail: ...


class RunLinks:
    """Executes the linking effects; keeps the index of runs waiting for event names."""

    def __init__(
        self,
        commands: CommandPublisher,
        workflows: WorkflowSource,
        events: EventFeed | None = None,
        notify: Notify | None = None,
    ) -> None:
        self.commands = commands
        self.notify = notify  # steps' notices (None: not published)
        self.workflows = workflows
        self.events = events
        self.waiting: dict[str, set[str]] = {}  # event name -> run ids waiting for it
        self._names_of: dict[str, set[str]] = {}  # run id -> the names it is indexed under
        self._tail: EventTail | None = None

    async def execute(self, effect: LinkEffect) -> None:
        match effect:
            case StartChild():
                await self._start_child(effect)
            case ReportToParent():
                command = RecordChild(
                    run_id=effect.parent_run_id,
                    at_ms=effect.at_ms,
                    step_id=effect.parent_step_id,
                    child_run_id=effect.run_id,
                    status=effect.status,
                    output=effect.output,
                    error=effect.error,
                )
                msg_id = in_life(f"child:{effect.run_id}:{effect.status}", effect.seed)
                await self._send(command, msg_id)
            case CancelChild():
                cancel = CancelRun(
                    run_id=effect.child_run_id, at_ms=effect.at_ms, reason=effect.reason
                )
                await self._send(cancel, in_life(f"cancel:{effect.child_run_id}", effect.seed))
            case WatchEvents():
                await self._watch(effect)
            case PublishNotice():
                await self._publish_notice(effect)
            case StartContinuation():
                await self._start_continuation(effect)
            case SendCommand():
                await self._send(effect.command, effect.msg_id)
            case _:
                assert_never(effect)

    async def _send(self, command: AnyCommand, msg_id: str) -> None:
        await self.commands.publish_command(command.run_id, codec.encode(command), msg_id)

    async def _start_child(self, effect: StartChild) -> None:
        workflow = effect.definition or await self.workflows.get_workflow(effect.workflow)
        child = effect.child_run_id
        if workflow is None:
            failure = RecordChild(
                run_id=effect.run_id,
                at_ms=effect.at_ms,
                step_id=effect.step_id,
                child_run_id=child,
                status="failed",
                error=f"workflow {effect.workflow!r} is not registered; the child cannot start",
                retryable=False,
            )
            await self._send(failure, in_life(f"child:{child}:missing", effect.seed))
            return
        start = StartRun(
            run_id=child,
            at_ms=effect.at_ms,
            seed=effect.seed,
            workflow=workflow,
            input=effect.input,
            parent_run_id=effect.run_id,
            parent_step_id=effect.step_id,
            depth=effect.depth,
            detached=effect.detached,
            control_root=effect.control_root or msgspec.UNSET,
            control_root_step=effect.control_root_step or msgspec.UNSET,
        )
        await self._send(start, in_life(f"start:{child}", effect.seed))

    async def _publish_notice(self, effect: PublishNotice) -> None:
        """Publish a step's notice on `dagnats.<topic>.<run>.<step>`; fire and forget (at
        least once after a restart)."""
        if self.notify is None:
            return
        subject = f"{NOTICE_SUBJECT_PREFIX}.{effect.topic}.{effect.run_id}.{effect.step_id}"
        await self.notify(subject, bytes(effect.payload))

    async def _start_continuation(self, effect: StartContinuation) -> None:
        workflow = await self.workflows.get_workflow(effect.workflow) or effect.definition
        if workflow is None:
            log.error(
                "run %s continued as %s of workflow %r, which is not registered; not started",
                effect.run_id, effect.new_run_id, effect.workflow,
            )  # fmt: skip
            return
        start = StartRun(
            run_id=effect.new_run_id,
            at_ms=effect.at_ms,
            seed=effect.seed,
            workflow=workflow,
            input=effect.input,
            parent_run_id=effect.parent_run_id,
            parent_step_id=effect.parent_step_id,
            depth=effect.depth,
            detached=effect.detached,
            continued_from=effect.run_id,
            chain_root=effect.chain_root,
            chain_index=effect.chain_index,
        )
        await self._send(start, in_life(f"start:{effect.new_run_id}", effect.seed))

    # -- external events -----------------------------------------------------------------

    async def _watch(self, effect: WatchEvents) -> None:
        if self.events is None:
            raise DagnatsError("this engine has no event feed: it cannot wait for events")
        for name in effect.names:
            self._index(effect.run_id, name)
        for name in effect.names:
            async for event in self.events.read_since(name, effect.since_ms):
                await self._deliver(effect.run_id, event)

    def _index(self, run_id: str, name: str) -> None:
        if run_id not in self._names_of and len(self._names_of) >= event_waiting_runs_max:
            log.warning(
                "event index full (%d runs); %s not indexed", event_waiting_runs_max, run_id
            )
            return
        self.waiting.setdefault(name, set()).add(run_id)
        self._names_of.setdefault(run_id, set()).add(name)

    def forget_run(self, run_id: str) -> None:
        """The run ended: it waits for nothing any more."""
        for name in self._names_of.pop(run_id, set()):
            runs = self.waiting.get(name)
            if runs is not None:
                runs.discard(run_id)
                if not runs:
                    del self.waiting[name]

    async def _deliver(self, run_id: str, event: PublishedEvent) -> None:
        command = DeliverEvent(
            run_id=run_id,
            at_ms=event.at_ms,
            name=event.name,
            payload=msgspec.Raw(event.payload),
            event_seq=event.seq,
        )
        await self._send(command, f"event:{event.seq}:{run_id}")

    async def open_routing(self) -> None:
        """Subscribe to new events now (before the engine resumes runs, so no event falls
        between a run's catch-up and the live tail)."""
        if self.events is not None and self._tail is None:
            self._tail = await self.events.open_tail()

    async def route(self, stop: asyncio.Event) -> None:
        """Send each new external event to the runs waiting for its name, until `stop`."""
        await self.open_routing()
        tail = self._tail
        if tail is None:
            return
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                next_event = asyncio.ensure_future(tail.next())
                done, _ = await asyncio.wait(
                    {next_event, stopping}, return_when=asyncio.FIRST_COMPLETED
                )
                if next_event not in done:
                    next_event.cancel()
                    break
                event = next_event.result()
                for run_id in sorted(self.waiting.get(event.name, ())):
                    try:
                        await self._deliver(run_id, event)
                    except Exception as error:  # the run's catch-up after a restart covers it
                        log.warning("event %d for %s not delivered: %s", event.seq, run_id, error)
        finally:
            stopping.cancel()
            self._tail = None
            await tail.close()


class KvWorkflows:
    """`WorkflowSource` over the `dagnats_workflows` KV bucket."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._kv: KeyValue | None = None

    async def get_workflow(self, name: str) -> WorkflowDef | None:
        if self._kv is None:
            self._kv = await self.js.key_value(WORKFLOWS_BUCKET)
        try:
            entry = await self._kv.get(name)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.BadRequestError):
            return None
        if not entry.value:
            return None
        try:
            workflow, _ = decode_stored_workflow(name, entry.value, entry.revision)
        except StoredWorkflowError as error:  # a garbage entry: as if not registered
            log.error("%s", error)
            return None
        return workflow
