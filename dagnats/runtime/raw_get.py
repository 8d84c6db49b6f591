"""Single-message gets of a stream (a KV entry, a run's first history message) answered raw.

nats-py's `get_msg` turns each answer into a `Msg`, a header dict (an email-module parser for
an API answer's base64 headers) and a parsed timestamp, which cost a client more than the
request's round trip. Here the answers reach their caller through the connection's router
(runtime/log_read.router) as bytes: one wildcard inbox per connection, a future per request.

Two kinds of get, each with the server's own semantics:
- `message_get`: `$JS.API.STREAM.MSG.GET.<stream>`, answered by the stream's leader (so the
  latest entry of a replicated stream); a JSON body whose `message` holds the base64 data
  and headers (msgspec decodes them to bytes).
- `direct_get`: `$JS.API.DIRECT.GET.<stream>`, answered by any replica of a stream that
  allows direct gets: the message itself, the server's `Nats-Sequence` among its headers, or
  a status (404: no such message).
A missing message is None; a refusal raises `nats.js.errors.APIError` (as nats-py would), no
answer within the timeout `nats.errors.TimeoutError`, no JetStream `NoRespondersError`. This
module reads; it publishes only requests.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping
from typing import Any, Final

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from dagnats.runtime.log_read import STATUS_AT, expire_answer, header_int, header_value, router
from dagnats.runtime.resources import HISTORY_STREAM, history_subject

raw_requests_max: Final = 4_096  # requests one connection has waiting at once (a bound)
SEQUENCE_AT: Final = b"\r\nNats-Sequence: "  # in a direct get's answer headers
SUBJECT_AT: Final = b"\r\nNats-Subject: "  # (the same)
KV_OPERATION_AT: Final = b"\r\nKV-Operation: "  # in a deleted or purged KV entry's headers
NOT_FOUND: Final = 404
REQUESTS_ATTRIBUTE: Final = "_dagnats_raw_requests"


# Whether each connection's history stream has more than one replica (asked once).
_replicated: weakref.WeakKeyDictionary[Client, bool] = weakref.WeakKeyDictionary()


async def history_replicated(js: JetStreamContext) -> bool:
    """Whether the history stream has more than one replica (one stream info per connection)."""
    known = _replicated.get(js._nc)
    if known is None:
        info = await js.stream_info(HISTORY_STREAM)
        known = _replicated[js._nc] = info.config.num_replicas not in (None, 1)
    return known


class StoredMessage(msgspec.Struct):
    """A message as a STREAM.MSG.GET answer holds it (data and headers base64 in the JSON)."""

    subject: str
    seq: int
    hdrs: bytes | None = None  # the raw header block (`NATS/1.0\r\n...`), None: no headers
    data: bytes = b""


class _MessageAnswer(msgspec.Struct):
    message: StoredMessage | None = None
    error: dict[str, Any] | None = None  # {code, err_code, description}


_MESSAGE_ANSWER: Final = msgspec.json.Decoder(_MessageAnswer)
Answer = tuple[bytes | None, bytes]  # (raw headers, data)


class _Requests:
    """A connection's requests answered to one wildcard inbox, each by its own token."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.inbox = client.new_inbox()
        self.subscribed = False
        self.waiting: dict[bytes, asyncio.Future[Answer]] = {}
        self._count = 0
        self._lock = asyncio.Lock()
        self._room = asyncio.Semaphore(raw_requests_max)  # requests waiting, at most

    async def request(self, subject: str, body: bytes, timeout_s: float) -> Answer:
        """The answer's (headers, data).

        Raises:
            nats.errors.TimeoutError: no answer within `timeout_s`.
        """
        assert timeout_s > 0, timeout_s
        async with self._room:  # (more at once wait for room: callers may gather thousands)
            assert len(self.waiting) < raw_requests_max, f"{len(self.waiting)} requests waiting"
            return await self._request(subject, body, timeout_s)

    async def _request(self, subject: str, body: bytes, timeout_s: float) -> Answer:
        if not self.subscribed:
            await self._subscribe()
        self._count += 1
        token = b"%d" % self._count
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Answer] = loop.create_future()
        self.waiting[token] = answer
        expiry = loop.call_later(timeout_s, expire_answer, answer)
        try:
            await self.client.publish(subject, body, reply=f"{self.inbox}.{token.decode()}")
            return await answer
        finally:
            expiry.cancel()
            del self.waiting[token]

    async def _subscribe(self) -> None:
        async with self._lock:
            if self.subscribed:
                return
            subscription = await self.client.subscribe(f"{self.inbox}.*")
            router(self.client).handlers[subscription._id] = self._on_answer
            self.subscribed = True

    async def _on_answer(
        self, subject: bytes, _reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        answer = self.waiting.get(subject[subject.rfind(b".") + 1 :])
        if answer is not None and not answer.done():  # (else late: its request gave up)
            answer.set_result((headers, data))


def _requests(client: Client) -> _Requests:
    """The connection's requests, kept on the client itself (as its router is)."""
    requests = getattr(client, REQUESTS_ATTRIBUTE, None)
    if not isinstance(requests, _Requests):
        requests = _Requests(client)
        setattr(client, REQUESTS_ATTRIBUTE, requests)
    return requests


async def message_get(
    js: JetStreamContext, stream: str, request: Mapping[str, object]
) -> StoredMessage | None:
    """The message a STREAM.MSG.GET `request` names (`{"last_by_subj": subject}`,
    `{"seq": 1, "next_by_subj": subject}`); None when there is none (or no such stream).

    Raises:
        nats.js.errors.APIError: another refusal; nats.errors.TimeoutError: no answer.
        nats.errors.NoRespondersError: no JetStream to answer.
    """
    subject = f"{js._prefix}.STREAM.MSG.GET.{stream}"
    body = msgspec.json.encode(request)
    headers, data = await _requests(js._nc).request(subject, body, js._timeout)
    _raise_status(headers)
    answer = _MESSAGE_ANSWER.decode(data)
    if answer.error is not None:
        if answer.error.get("code") == NOT_FOUND:
            return None
        nats.js.errors.APIError.from_error(answer.error)  # (raises)
    assert answer.message is not None, f"{subject} answered neither a message nor an error"
    return answer.message


async def direct_get(
    js: JetStreamContext, stream: str, request: Mapping[str, object]
) -> StoredMessage | None:
    """The message a DIRECT.GET `request` names (as for `message_get`) from any replica, its
    headers the stored message's with the server's (`Nats-Sequence`, ...); None when that
    replica has none.

    Raises:
        nats.js.errors.APIError: a status other than 404; nats.errors.TimeoutError, ...
    """
    subject = f"{js._prefix}.DIRECT.GET.{stream}"
    body = msgspec.json.encode(request)
    headers, data = await _requests(js._nc).request(subject, body, js._timeout)
    if headers is not None and headers[STATUS_AT : STATUS_AT + 3] == b"404":
        return None
    _raise_status(headers)
    seq = None if headers is None else header_int(headers, SEQUENCE_AT)
    if headers is None or seq is None or seq <= 0:
        raise nats.js.errors.APIError(description=f"{subject} answered without a sequence")
    stored = header_value(headers, SUBJECT_AT)
    return StoredMessage(subject=(stored or b"").decode(), seq=seq, hdrs=headers, data=data)


def _raise_status(headers: bytes | None) -> None:
    """Raise for a status answer (`NATS/1.0 503 ...`: no one to answer; any other code)."""
    if headers is None or headers[STATUS_AT - 1 : STATUS_AT] != b" ":
        return
    code = headers[STATUS_AT : STATUS_AT + 3]
    if code == b"503":
        raise nats.errors.NoRespondersError()
    end = headers.find(b"\r\n")
    line = headers[: end if end >= 0 else len(headers)].decode(errors="replace")
    raise nats.js.errors.APIError(code=int(code) if code.isdigit() else None, description=line)


def kv_operation(headers: bytes | None) -> bytes:
    """The `KV-Operation` header's value of a KV entry (b"" for a put: it has none)."""
    value = None if headers is None else header_value(headers, KV_OPERATION_AT)
    return b"" if value is None else value.strip()


async def history_message(
    js: JetStreamContext, request: Mapping[str, object]
) -> StoredMessage | None:
    """The history message a get `request` names (`{"last_by_subj": ...}`, `{"seq": 1,
    "next_by_subj": ...}`), None when there is none: a direct get, which any replica may
    answer, a follower before it has the message (a run just started, read through another
    server of the cluster); so on a replicated history stream a miss is asked again of its
    leader (STREAM.MSG.GET). One stream info per connection tells whether it is replicated."""
    found = await direct_get(js, HISTORY_STREAM, request)
    if found is not None or not await history_replicated(js):
        return found
    return await message_get(js, HISTORY_STREAM, request)


async def first_message(js: JetStreamContext, run_id: str) -> tuple[int, bytes] | None:
    """The run's first history message as (seq, data), None when it has none."""
    found = await history_message(js, {"seq": 1, "next_by_subj": history_subject(run_id)})
    return None if found is None else (found.seq, found.data)
