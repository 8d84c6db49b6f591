"""Work queues on JetStream: task messages for workers, commands for the engine, dead letters.

- `JetStreamTaskQueue` (`protocols.TaskQueue`; `fetch_ready`: a no-wait pull; `standing_pull`:
  a worker's standing pull read raw, runtime/task_polls): tasks on
  `dagnats.task.<task_type>` in DAGNATS_TASKS, deduplicated on `Nats-Msg-Id`; one durable
  pull consumer per task type whose ack wait is the heartbeat timeout (`in_progress`
  restarts it) and whose deliveries are bounded (`max_deliver`).
- `JetStreamCommandQueue` (`protocols.CommandQueue` and `protocols.DeadLetters`): commands on
  `dagnats.cmd.<partition>.<run_id>.<kind>` (the kind of its connection's role) in
  DAGNATS_COMMANDS, fetched in batches by the engine's durable pull consumer on
  `dagnats.cmd.>` (or on the partitions one engine owns), acked by
  the engine after processing; dead letters on `dagnats.dead.<kind>` with a reason header.

Consumers are created idempotently; an existing consumer whose settings differ raises
`ResourceConfigError` (never silently changed), except a task consumer's ack wait: the
heartbeat timeout a worker asks for (or a new default) updates it, with a log line. This
module may publish and consume on these streams only; it does not decode payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from dagnats.observe import tracing
from dagnats.runtime import settings
from dagnats.runtime.js_publish import JetStreamPublisher
from dagnats.runtime.partition_count import PartitionCount
from dagnats.runtime.protocols import TaskMessage
from dagnats.runtime.resources import (
    COMMAND_SUBJECTS,
    COMMANDS_STREAM,
    DEAD_REASON_HEADER,
    DEAD_STREAM,
    ENGINE_CONSUMER,
    TASKS_STREAM,
    ResourceConfigError,
    check_config,
    command_subject,
    dead_subject,
    task_consumer_name,
    task_subject,
)
from dagnats.runtime.standing_pull import CommandPull, Dispatch
from dagnats.runtime.task_polls import (
    MSG_ID_HEADER,
    SCHEDULER_HEADER,
    StandingPull,
    delivery_fields,
    give_back,
    reply_fields,
)
from dagnats.runtime.task_tokens import TASK_TOKEN_HEADER, TaskTokens
from kernel.errors import PayloadTooLargeError

CONSUMER_CHECKED_FIELDS: Final = ("ack_wait", "max_deliver", "filter_subject", "filter_subjects")
log = logging.getLogger("dagnats.queue")


class JetStreamMessage:
    """`protocols.QueueMessage` over a delivered JetStream message.

    Its delivery count, stream sequence, pending count and stored time are read once from the
    reply subject (`reply_fields`): nats-py's `Msg.metadata` makes a datetime and two frozen
    dataclasses per message, on the path of every task and command."""

    __slots__ = ("_message", "num_delivered", "num_pending", "stored_ms", "stream_seq")

    def __init__(self, message: Msg) -> None:
        self._message = message
        fields = delivery_fields(message.reply)
        self.num_delivered, self.stream_seq, self.num_pending, self.stored_ms = fields

    @property
    def subject(self) -> str:
        return self._message.subject

    @property
    def data(self) -> bytes:
        return self._message.data

    @property
    def msg_id(self) -> str | None:
        """The publisher's Nats-Msg-Id, if it set one."""
        headers = self._message.headers
        return None if headers is None else headers.get(MSG_ID_HEADER)

    @property
    def task_token(self) -> str | None:
        """The engine's token of a task message, or of the task a result reports on
        (runtime/task_tokens)."""
        headers = self._message.headers
        return None if headers is None else headers.get(TASK_TOKEN_HEADER)

    @property
    def headers(self) -> dict[str, str] | None:
        """The message's headers (a task's `traceparent`: dagnats.observe.tracing)."""
        return self._message.headers

    @property
    def scheduler(self) -> str | None:
        """The schedule's subject when a message schedule fired this message, else None."""
        headers = self._message.headers
        return None if headers is None else headers.get(SCHEDULER_HEADER)

    async def ack(self) -> None:
        """Done (fire-and-forget: a lost ack means one redelivery, which decide absorbs)."""
        await self._message.ack()

    async def nak(self, delay_ms: int = 0) -> None:
        """Deliver again after delay_ms."""
        assert 0 <= delay_ms <= settings.nak_delay_ms_max, delay_ms
        await self._message.nak(delay=delay_ms / 1000 if delay_ms else None)

    async def in_progress(self) -> None:
        """Still working: restart the ack wait (the heartbeat)."""
        await self._message.in_progress()

    async def term(self) -> None:
        """Never deliver again."""
        await self._message.term()


class JetStreamTaskQueue:
    """`protocols.TaskQueue`: publish tasks, fetch them per task type, settle each message."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        ack_wait_ms: int = settings.task_ack_wait_ms_default,
        deliver_max: int = settings.task_deliver_max_default,
        tokens: TaskTokens | None = None,
    ) -> None:
        assert 0 < ack_wait_ms <= settings.timer_horizon_ms_max, ack_wait_ms
        self.tokens = tokens  # an engine's: signs what it publishes (runtime/task_tokens)
        assert 1 <= deliver_max <= settings.command_deliver_max, deliver_max
        self.js = js
        self.ack_wait_ms = ack_wait_ms
        self.deliver_max = deliver_max
        self.publisher = JetStreamPublisher(js)
        self._subscriptions: dict[str, JetStreamContext.PullSubscription] = {}
        self._pulls: list[StandingPull] = []  # the standing pulls of the fetch loops on it
        # The credential user a worker on this connection announces itself under (the worker
        # directory, runtime/workers_directory); None: it does not announce itself.
        self.directory_user: str | None = None

    async def publish(self, task_type: str, payload: bytes, msg_id: str) -> None:
        """Enqueue a task; a msg_id seen within the tasks' duplicate window is dropped."""
        _check_size("task message", payload)
        subject = task_subject(task_type)
        headers = tracing.inject({MSG_ID_HEADER: msg_id})  # the attempt's trace context
        if self.tokens is not None:
            headers[TASK_TOKEN_HEADER] = self.tokens.sign(msg_id)
        await self.publisher.publish(subject, payload, stream=TASKS_STREAM, headers=headers)

    async def fetch(
        self, task_type: str, *, batch: int, timeout_ms: int
    ) -> Sequence[JetStreamMessage]:
        """Up to `batch` tasks of `task_type`, waiting at most timeout_ms; [] if none came."""
        subscription = await self._subscription(task_type)
        return await fetch_batch(subscription, batch=batch, timeout_ms=timeout_ms)

    async def fetch_ready(self, task_type: str, *, batch: int) -> Sequence[JetStreamMessage]:
        """Up to `batch` tasks of `task_type` waiting now, without waiting for more: one
        no-wait pull request (one round trip), answered by what is there and a status.

        Must not run beside a `fetch` of the same task type (they share its inbox); a
        message that comes after the bounded wait stays in the inbox for the next fetch."""
        assert 1 <= batch <= settings.fetch_batch_max, batch
        subscription = await self._subscription(task_type)
        answer_s = settings.fetch_no_wait_answer_ms_max / 1000
        # (nats-py has no no-wait fetch; any status ends the answer, an error one too)
        messages = await _pull(subscription, batch, answer_s, errors_end=True)
        assert len(messages) <= batch
        return [JetStreamMessage(message) for message in messages]

    async def standing_pull(
        self, task_type: str, *, credit_max: int, on_change: Callable[[], None]
    ) -> StandingPull:
        """A new standing pull of `task_type` (runtime/task_polls: requests for several tasks
        that stay on the server, their answers read raw, `on_change` called as they come),
        closed by its owner or at `close`; each has its own inbox (it may run beside
        `fetch`, `fetch_ready` and other pulls)."""
        assert 1 <= credit_max <= settings.fetch_batch_max, credit_max
        subscription = await self._subscription(task_type)
        self._pulls = [pull for pull in self._pulls if not pull.closed]
        assert len(self._pulls) < settings.task_types_per_queue_max, len(self._pulls)
        pull = StandingPull(subscription._nc, subscription._nms, credit_max, on_change)
        self._pulls.append(pull)
        return pull

    async def _subscription(self, task_type: str) -> JetStreamContext.PullSubscription:
        """The pull subscription of a task type's durable consumer (bound on first use)."""
        subscription = self._subscriptions.get(task_type)
        if subscription is None:
            assert len(self._subscriptions) < settings.task_types_per_queue_max
            config = api.ConsumerConfig(
                durable_name=task_consumer_name(task_type),
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait_ms / 1000,
                max_deliver=self.deliver_max,
                max_ack_pending=settings.ack_pending_max,
                filter_subject=task_subject(task_type),
            )
            subscription = await bind_pull_consumer(
                self.js, TASKS_STREAM, config, updatable=("ack_wait",)
            )
            self._subscriptions[task_type] = subscription
        return subscription

    async def close(self) -> None:
        """Unsubscribe the pull subscriptions and close the standing pulls, giving back with a
        nak what they brought and nobody took (the durable consumers stay)."""
        pulls, self._pulls = self._pulls, []
        for pull in pulls:
            await give_back(await pull.close())
        for subscription in self._subscriptions.values():
            await subscription.unsubscribe()
        self._subscriptions.clear()


class JetStreamCommandQueue:
    """`protocols.CommandQueue` and `protocols.DeadLetters` on DAGNATS_COMMANDS / DAGNATS_DEAD.

    Publishing needs no consumer; the engine's durable consumer is bound on the first
    `fetch_commands`. `filter_subjects` narrows it to the partitions one engine owns
    (`resources.command_partition_filter`); all engines share the consumer name.
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        partitions: PartitionCount | int | None = None,
        consumer: str = ENGINE_CONSUMER,
        filter_subjects: Sequence[str] = (COMMAND_SUBJECTS,),
        ack_wait_ms: int = settings.command_ack_wait_ms,
        kind: str = "engine",
    ) -> None:
        assert filter_subjects, "the engine consumer needs a filter"
        self.js = js
        self.kind = kind  # the subject kind of what this connection publishes (runtime/roles)
        # The deployment's stored count (runtime/partition_count), or a fixed one.
        self.partitions = (
            partitions if isinstance(partitions, PartitionCount) else PartitionCount(js, partitions)
        )
        self.consumer = consumer
        self.filter_subjects = tuple(filter_subjects)
        self.ack_wait_ms = ack_wait_ms
        self.publisher = JetStreamPublisher(js)
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._pull: CommandPull | None = None
        self._dispatch: Dispatch | None = None

    async def publish_live(self, subject: str, data: bytes) -> None:
        """Publish on core NATS, outside every stream (a handler's live output: never
        stored, lost when nobody listens)."""
        await self.js._nc.publish(subject, data)

    async def publish_command(
        self, run_id: str, payload: bytes, msg_id: str, *, token: str | None = None
    ) -> None:
        """Enqueue a command for the run; a msg_id seen within the duplicate window is dropped.
        `token`: a result's task token (runtime/task_tokens), sent as a header."""
        _check_size("command", payload)
        subject = command_subject(run_id, await self.partitions.get(), self.kind)
        headers = {MSG_ID_HEADER: msg_id}
        if token is not None:
            headers[TASK_TOKEN_HEADER] = token
        await self.publisher.publish(subject, payload, stream=COMMANDS_STREAM, headers=headers)

    async def fetch_commands(self, *, batch: int, timeout_ms: int) -> Sequence[TaskMessage]:
        """Up to `batch` commands in stream order, waiting at most timeout_ms; [] if none
        (through a standing pull: runtime/standing_pull)."""
        if self._subscription is None:
            single = len(self.filter_subjects) == 1
            config = api.ConsumerConfig(
                durable_name=self.consumer,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait_ms / 1000,
                max_deliver=settings.command_deliver_max,
                max_ack_pending=settings.ack_pending_max,
                filter_subject=self.filter_subjects[0] if single else None,
                filter_subjects=None if single else list(self.filter_subjects),
            )
            await _settle_ack_wait(self.js, COMMANDS_STREAM, config)
            self._subscription = await bind_pull_consumer(self.js, COMMANDS_STREAM, config)
        if self._pull is None:
            self._pull = CommandPull(self._subscription, credit_max=settings.command_batch_max)
            self._pull.dispatch = self._dispatch
        return await self._pull.fetch(batch, timeout_ms)

    def dispatch_to(self, dispatch: Dispatch | None) -> None:
        """Hand what the standing pull brings to `dispatch` as it comes, in the client's read
        loop, where it accepts (runtime/standing_pull `CommandPull._changed`); None: only
        fetches take it."""
        self._dispatch = dispatch
        if self._pull is not None:
            self._pull.dispatch = dispatch

    async def release(self) -> int:
        """Close the standing pull (the server drops its requests) and give back what it
        brought and no fetch took, for another engine at once; the next fetch asks again.
        Not while it holds a command delivered `command_give_back_deliveries_max` times: each
        give-back is a delivery, and an engine long at its limit would bring it to
        `command_deliver_max`, past which the server never delivers it again (it stays held,
        kept in progress, for this engine's next fetch). How many were given back."""
        pull = self._pull
        if pull is None:
            return 0
        often = settings.command_give_back_deliveries_max
        if any(message.num_delivered >= often for message in pull.held()):
            return 0
        self._pull = None
        return await pull.close()

    def held(self) -> Sequence[TaskMessage]:
        """Commands the standing pull brought that no fetch took yet (the engine keeps them in
        progress)."""
        return () if self._pull is None else self._pull.held()

    async def publish_dead(self, kind: str, payload: bytes, reason: str) -> None:
        """Keep `payload` on `dagnats.dead.<kind>` with its reason (one line, bounded)."""
        line = " ".join(reason.split())  # header values cannot hold line breaks
        encoded = line.encode()[: settings.dead_reason_bytes_max]
        headers = {DEAD_REASON_HEADER: encoded.decode(errors="ignore")}
        _check_size("dead letter", payload)
        await self.js.publish(dead_subject(kind), payload, stream=DEAD_STREAM, headers=headers)

    async def close(self) -> None:
        """Give back what the standing pull brought and no fetch took, then unsubscribe the
        engine's pull subscription (the durable consumer stays)."""
        if self._pull is not None:
            await self._pull.close()
            self._pull = None
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None


async def _settle_ack_wait(js: JetStreamContext, stream: str, config: api.ConsumerConfig) -> None:
    """Give an existing engine consumer the ack wait this code uses (a data dir made by an
    older version had 30 s): the ack wait is how long a stopped engine holds its commands, a
    setting of the code, not of the deployment. Other differences still raise (bind)."""
    name = config.durable_name
    assert name is not None and config.ack_wait is not None
    try:
        info = await js.consumer_info(stream, name)
    except nats.js.errors.NotFoundError:
        return  # bind_pull_consumer creates it
    if info.config.ack_wait != config.ack_wait:
        updated = dataclasses.replace(info.config, ack_wait=config.ack_wait)
        await js.add_consumer(stream, updated)  # create-or-update: ack_wait may change


async def bind_pull_consumer(
    js: JetStreamContext,
    stream: str,
    config: api.ConsumerConfig,
    *,
    updatable: tuple[str, ...] = (),
) -> JetStreamContext.PullSubscription:
    """Create the durable pull consumer if missing (or check it), then bind to it.

    Args:
        updatable: fields of CONSUMER_CHECKED_FIELDS that JetStream may change on an existing
            consumer (`ack_wait`) and that are updated, not refused, when they differ.
    Raises:
        ResourceConfigError: the consumer exists with other ack_wait/max_deliver/filters
            (other than the `updatable` ones).
    """
    name = config.durable_name
    assert name is not None
    assert set(updatable) <= set(CONSUMER_CHECKED_FIELDS), updatable
    try:
        info = await js.consumer_info(stream, name)
    except nats.js.errors.NotFoundError:
        config.name = name
        info = await js.add_consumer(stream, config)
    wanted = {field: getattr(config, field) for field in CONSUMER_CHECKED_FIELDS}
    strict = {field: value for field, value in wanted.items() if field not in updatable}
    check_config(f"consumer {stream}/{name}", info.config, strict)
    changed = {
        field: wanted[field]
        for field in updatable
        if wanted[field] is not None and getattr(info.config, field) != wanted[field]
    }
    if changed:
        for field, value in changed.items():
            log.info("consumer %s/%s: %s %r -> %r (updated)", stream, name, field,
                     getattr(info.config, field), value)  # fmt: skip
        info = await js.add_consumer(stream, info.config.evolve(**changed))  # create-or-update
        check_config(f"consumer {stream}/{name}", info.config, wanted)
    return await js.pull_subscribe_bind(name, stream)


async def fetch_batch(
    subscription: JetStreamContext.PullSubscription, *, batch: int, timeout_ms: int
) -> list[JetStreamMessage]:
    """Fetch up to `batch` messages within timeout_ms; [] when none came.

    Raises:
        nats.js.errors.APIError: the server answered the pull with an error status (not a
            timeout, "no messages" or a conflict: those end the fetch with what came).
        nats.errors.ConnectionClosedError: the connection is closed.
    """
    assert 1 <= batch <= settings.fetch_batch_max, batch
    assert 0 < timeout_ms <= settings.fetch_timeout_ms_max, timeout_ms
    # A fetch of n would wait, once it long-polls, until n messages came or the time is up,
    # which would hold a lone message back for the whole timeout. So long-poll for one, then
    # take at once (a no-wait pull) as many more as its metadata says are waiting.
    taken = [
        JetStreamMessage(m) for m in await _pull(subscription, 1, timeout_ms / 1000, wait=True)
    ]
    waiting = taken[-1].num_pending if taken else 0  # (read from the wrapped message)
    if batch > 1 and waiting > 0:
        more = min(batch - 1, waiting)  # (fewer when another consumer took some meanwhile)
        answer_s = settings.fetch_no_wait_answer_ms_max / 1000
        try:
            taken += [JetStreamMessage(m) for m in await _pull(subscription, more, answer_s)]
        except nats.errors.Error as error:  # what was taken is handled, not left to its ack wait
            log.info("fetch: taking the waiting messages failed (%s); %d taken", error, len(taken))
    assert len(taken) <= batch
    return taken


async def _pull(
    subscription: JetStreamContext.PullSubscription, batch: int, timeout_s: float,
    *, wait: bool = False, errors_end: bool = False,
) -> list[Msg]:  # fmt: skip
    """Up to `batch` messages of one pull request: messages of an earlier request left in
    the inbox first (no request then), else a request that long-polls for them (`wait`, until
    timeout_s) or is answered at once with what is there (a no-wait pull, read for at most
    timeout_s). nats-py's `fetch` does the same with two tasks, a uuid and a `wait_for` per
    message read (`Subscription.next_msg`); this takes from the inbox's queue, under an
    `asyncio.timeout` only when it must wait (the engine fetches once per command batch;
    the worker polls). A long poll's request expires a margin before its wait ends
    (settings.fetch_expiry_margin_share: the server counts from when it got the request, so a
    request sent late still ends before the reader leaves) and the poll returns at that
    expiry (a 408, 404 or 409 within the margin of its end); one sooner ends an earlier
    request answered late, and the wait goes on. An error status raises `APIError` as
    nats-py's fetch does, unless messages came before it (they are returned) or `errors_end`
    (it ends the answer)."""
    inbox = subscription._sub
    messages = _left_over(inbox, batch)
    if messages:
        return messages
    margin_s = min(timeout_s / 2, max(
        timeout_s * settings.fetch_expiry_margin_share, settings.fetch_expiry_margin_ms_min / 1000
    ))  # fmt: skip
    expires_ns = int((timeout_s - margin_s) * 1_000_000_000)
    request = {"batch": batch, "expires": expires_ns} if wait else {"batch": batch, "no_wait": True}
    await subscription._nc.publish(
        subscription._nms, json.dumps(request).encode(), subscription._deliver
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(messages) < batch:
        message = await next_message(inbox, deadline)
        if message is None:
            break  # (the time is up)
        status = JetStreamContext.is_status_msg(message)
        if status == api.StatusCode.CONTROL_MESSAGE:
            continue  # (an idle heartbeat)
        if status and (errors_end or JetStreamContext._is_temporary_error(status)):
            if wait and loop.time() < deadline - margin_s:
                continue  # (an earlier request's end, answered late: the wait goes on)
            break  # 404 no messages, 408 request expired, 409 conflict: what came
        if status and messages:
            break  # (an error after messages: they are handled; the next pull raises it)
        if status:
            raise nats.js.errors.APIError.from_msg(message)
        messages.append(message)
    return messages


def _left_over(inbox: Subscription, batch: int) -> list[Msg]:
    """Messages already in the inbox (of an earlier request answered late), at most `batch`;
    status messages of earlier requests are dropped."""
    messages: list[Msg] = []
    queue = inbox._pending_queue
    while len(messages) < batch and not queue.empty():
        message = queue.get_nowait()
        inbox._pending_size -= len(message.data)
        queue.task_done()
        if not JetStreamContext.is_status_msg(message):
            messages.append(message)
    return messages


async def next_message(inbox: Subscription, deadline: float) -> Msg | None:
    """The inbox's next message by `deadline` (loop time; None: none came), as
    `Subscription.next_msg` without its per-call tasks. A closed connection raises within
    fetch_closed_check_ms (next_msg's wait was cancelled at the close).

    Raises:
        nats.errors.ConnectionClosedError: the connection is closed.
    """
    queue = inbox._pending_queue
    loop = asyncio.get_running_loop()
    message: Msg | None = None
    while message is None:
        if inbox._conn.is_closed:
            raise nats.errors.ConnectionClosedError
        if not queue.empty():
            message = queue.get_nowait()
            break
        left_s = deadline - loop.time()
        if left_s <= 0:
            return None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(left_s, settings.fetch_closed_check_ms / 1000)):
                message = await queue.get()
    inbox._pending_size -= len(message.data)
    queue.task_done()
    return message


def _check_size(field: str, payload: bytes) -> None:
    if len(payload) > settings.history_message_bytes_max:
        raise PayloadTooLargeError(field, len(payload), settings.history_message_bytes_max)


__all__ = [
    "MSG_ID_HEADER",
    "JetStreamCommandQueue",
    "JetStreamMessage",
    "JetStreamTaskQueue",
    "ResourceConfigError",
    "bind_pull_consumer",
    "fetch_batch",
    "reply_fields",
    "task_consumer_name",
]
