"""runtime/wire_parser's `WireParser` against nats-py's own `Parser`, byte for byte.

Properties: for any stream of valid frames (MSG, HMSG with headers or a status, +OK, PING,
PONG, INFO, -ERR), cut into reads anywhere, both parsers hand the client the same calls in the
same order ((sid, subject, reply, data, headers) of each message, each ping, pong, info and
error) and leave the same state after every read (buffer, state, sizes, the message line's
arguments); for any mix of valid frames and malformed bytes, the same calls up to the same
exception (type and text) or the same state. Examples: a reset by a callback ends the read in
both, a payload larger than a read, an unknown line longer than the control line maximum.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Coroutine
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.errors import ProtocolError
from nats.protocol.parser import Parser

from dagnats.runtime.wire_parser import WireParser, number_digits_kept_max, numbers_kept_max

Event = tuple[object, ...]


class Recorder:
    """A client's `_process_*` callbacks, recording each call; an error with "stale" in it
    resets the parser, as nats-py's client does on a stale connection."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.parser: Parser | None = None

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        assert type(data) is bytes and (headers is None or type(headers) is bytes)
        self.events.append(("msg", sid, subject, reply, data, headers))

    async def _process_ping(self) -> None:
        self.events.append(("ping",))

    async def _process_pong(self) -> None:
        self.events.append(("pong",))

    async def _process_info(self, info: dict[str, Any]) -> None:
        self.events.append(("info", info))

    async def _process_err(self, message: str) -> None:
        self.events.append(("err", message))
        if "stale" in message and self.parser is not None:
            self.parser.reset()


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run a parse whose callbacks never wait (the recorder's) to its end."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise AssertionError("a parse waited on something")


def state_of(parser: Parser) -> tuple[object, ...]:
    arguments = dict(parser.msg_arg) if parser.state == 2 else {}
    return (bytes(parser.buf), parser.state, parser.needed, parser.header_needed, arguments)


def feed(parser_class: type[Parser], reads: list[bytes]) -> tuple[Recorder, list[object]]:
    """Each read to a new parser of `parser_class`; (its recorder, the state after each read,
    ending with the exception a read raised, if one did)."""
    recorder = Recorder()
    parser = parser_class(recorder)
    recorder.parser = parser
    states: list[object] = []
    for data in reads:
        try:
            run(parser.parse(data))
        except Exception as error:
            states.append((type(error), str(error), state_of(parser)))
            break
        states.append(state_of(parser))
    return recorder, states


token = st.binary(min_size=1, max_size=24).map(
    lambda raw: bytes(b for b in raw if b > 32 and b != 127) or b"x"
)
header_name = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-", min_size=1)
header_value = st.binary(max_size=30).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b""))
status = st.sampled_from([b"", b" 408 Request Timeout", b" 100 Idle Heartbeat", b" 503"])


@st.composite
def header_block(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.tuples(header_name, header_value), max_size=4))
    block = b"NATS/1.0" + draw(status) + b"\r\n"
    for name, value in lines:
        block += name.encode() + b": " + value + b"\r\n"
    return block + b"\r\n"


@st.composite
def message(draw: st.DrawFn) -> bytes:
    subject, sid = draw(token), draw(st.integers(0, 10**9))
    reply = draw(st.one_of(st.none(), token))
    payload = draw(st.binary(max_size=200))
    middle = b"%b %d" % (subject, sid) + (b" " + reply if reply is not None else b"")
    if draw(st.booleans()):
        return b"MSG %b %d\r\n%b\r\n" % (middle, len(payload), payload)
    headers = draw(header_block())
    size = len(headers) + len(payload)
    return b"HMSG %b %d %d\r\n%b%b\r\n" % (middle, len(headers), size, headers, payload)


info = st.dictionaries(st.sampled_from(["server_id", "max_payload", "ldm"]), st.integers(0, 9))
other = st.one_of(
    st.sampled_from([b"+OK\r\n", b"PING\r\n", b"PONG\r\n", b"-ERR 'Unknown Subject'\r\n"]),
    info.map(lambda fields: b"INFO " + json.dumps(fields).encode() + b"\r\n"),
)
frame = st.one_of(message(), message(), other)
malformed = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([
        b"MSG a 1\r\n", b"5\r\n", b"HMSG a 1 10 20\r\n", b"30\r\n", b"MSG\ta\t1\t5\r\n",
        b"MSG a 1 5 \r\n", b"\r\n", b"-ERR \r\n", b"INFO {bad\r\n", b"MSG a x 1\r\n",
        b"HMSG a 1 r\r10 20\r\n", b"-ERR 'Stale Connection'\r\n", b"MSG a +1 2\r\n",
        b"MSG a 1_0 2\r\n", b"PING \r\n", b"HMSG a b 1 2\r\n", b"MSG a 1 r\n5\r\n", b"M", b"H",
    ]),
)  # fmt: skip


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    """`stream` cut at `points` (any positions, in any order, repeated or not)."""
    edges = sorted({0, len(stream), *(point % (len(stream) + 1) for point in points)})
    return [stream[start:end] for start, end in itertools.pairwise(edges)] or [b""]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(frame, max_size=12), points=st.lists(st.integers(0, 10**6), max_size=8))
def test_valid_frames_cut_anywhere_read_as_nats_py_reads_them(
    frames: list[bytes], points: list[int]
) -> None:
    reads = cut(b"".join(frames), points)
    theirs, their_states = feed(Parser, reads)
    ours, our_states = feed(WireParser, reads)
    assert ours.events == theirs.events
    assert our_states == their_states
    assert sum(event[0] == "msg" for event in ours.events) == sum(
        part.startswith((b"MSG", b"HMSG")) for part in frames
    ), "every message handed over (no exception on valid frames)"
    assert not any(isinstance(state, tuple) and len(state) == 3 for state in our_states)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(st.one_of(frame, malformed), max_size=10),
    points=st.lists(st.integers(0, 10**6), max_size=6),
)
def test_malformed_bytes_read_as_nats_py_reads_them(parts: list[bytes], points: list[int]) -> None:
    reads = cut(b"".join(parts), points)
    theirs, their_states = feed(Parser, reads)
    ours, our_states = feed(WireParser, reads)
    assert ours.events == theirs.events
    assert our_states == their_states


def test_a_reset_by_a_callback_ends_the_read_in_both() -> None:
    stream = b"MSG a 1 1\r\nx\r\n-ERR 'Stale Connection'\r\nMSG b 2 1\r\ny\r\n"
    for reads in ([stream], [stream[:20], stream[20:]]):
        theirs, their_states = feed(Parser, reads)
        ours, our_states = feed(WireParser, reads)
        assert ours.events == theirs.events
        assert [event[0] for event in ours.events] == ["msg", "err"], ours.events
        assert our_states == their_states


def test_a_payload_larger_than_a_read_arrives_whole() -> None:
    payload = bytes(range(256)) * 400  # 100 KiB, over three of the client's 32 KiB reads
    stream = b"HMSG big 3 r 12 %d\r\nNATS/1.0\r\n\r\n%b\r\nPING\r\n" % (12 + len(payload), payload)
    reads = [stream[start : start + 32768] for start in range(0, len(stream), 32768)]
    theirs, their_states = feed(Parser, reads)
    ours, our_states = feed(WireParser, reads)
    assert ours.events == theirs.events
    assert ours.events == [("msg", 3, b"big", b"r", payload, b"NATS/1.0\r\n\r\n"), ("ping",)]
    assert our_states == their_states


def test_an_unknown_line_raises_within_the_control_line_maximum_only() -> None:
    short, long = b"WHAT is this\r\n", b"WHAT " + b"x" * 5000 + b"\r\n"
    for stream, raises in ((short, True), (long, False)):
        theirs, their_states = feed(Parser, [stream])
        ours, our_states = feed(WireParser, [stream])
        assert our_states == their_states
        assert isinstance(our_states[-1], tuple) and (len(our_states[-1]) == 3) == raises
        assert ours.events == theirs.events == []


def test_a_number_too_long_for_int_is_a_malformed_message_in_both() -> None:
    stream = b"MSG a 1 " + b"9" * 5000 + b"\r\n"
    theirs, their_states = feed(Parser, [stream])
    ours, our_states = feed(WireParser, [stream])
    assert ours.events == theirs.events == []
    assert our_states == their_states
    last = our_states[-1]
    assert isinstance(last, tuple) and last[0] is ProtocolError, last


def test_numbers_read_stay_within_their_bound() -> None:
    frames = b"".join(b"MSG a %d 0\r\n\r\n" % sid for sid in range(numbers_kept_max + 10))
    ours, _ = feed(WireParser, [frames])
    assert len(ours.events) == numbers_kept_max + 10
    from dagnats.runtime import wire_parser

    assert len(wire_parser._numbers) <= numbers_kept_max


TRICKY_STREAMS = [
    b"HMSG a 1 10 20\r\n30\r\n" + b"x" * 40 + b"\r\nPING\r\n",  # nats-py reads 30 as the size
    b"HMSG a 1 10 20\r\n \t30\r\n" + b"x" * 40 + b"\r\n",
    b"HMSG a 1 12 12\r\nNATS/1.0\r\n\r\n\r\nMSG b 2 r 1\r\nx\r\n",
    b"MSG a 1 r\n5\r\nabcde\r\n",
    b"MSG a 1 r\r5\r\nabcde\r\n",
    b"MSG\ta\t1\t5\r\nabcde\r\n",
    b"MSG a  1   r  5\r\nabcde\r\n",
    b"HMSG a 1 r\x0b12 12\r\nNATS/1.0\r\n\r\n\r\n",
    b"MSG a 1 5 \r\nabcde\r\n",
    b"MSG a 1 +5\r\nabcde\r\n",
    b"MSG a +1 5\r\nabcde\r\n",
    b"MSG a 1 \xd9\xa1\r\nx\r\n",
]


def test_tricky_lines_read_as_nats_py_reads_them_at_every_cut() -> None:
    for stream in TRICKY_STREAMS:
        for point in range(len(stream)):
            reads = cut(stream, [point])
            theirs, their_states = feed(Parser, reads)
            ours, our_states = feed(WireParser, reads)
            assert ours.events == theirs.events, (stream, point)
            assert our_states == their_states, (stream, point)


def test_long_numbers_are_read_but_not_kept() -> None:
    """A size of more digits than `number_digits_kept_max` (a hostile server's: up to 4,300
    digits each) is read as nats-py reads it and not kept (4,096 of them held ~24 MiB)."""
    from dagnats.runtime import wire_parser

    sizes = [b"0" * (number_digits_kept_max + extra) + b"5" for extra in range(20)]
    frames = b"".join(b"MSG a 1 %s\r\nabcde\r\n" % size for size in sizes)
    theirs, _ = feed(Parser, [frames])
    ours, _ = feed(WireParser, [frames])
    assert ours.events == theirs.events and len(ours.events) == len(sizes)
    assert not any(len(text) > number_digits_kept_max for text in wire_parser._numbers)
