"""Review of runtime/wire_parser: where `WireParser` and nats-py's `Parser` part ways.

A callback that fails (raises, or its task is cancelled) on a PING or a PONG: nats-py has
consumed the line before the call, so the bytes after it are what its next read starts from;
the wire parser must leave the same buffer (else the next read answers the PING again, or
pops another PONG's future).

A nats-py whose parser is not the one the wire parser was checked against (a 2.16.x patch
release: pyproject allows any) keeps its own parser: `install` checks a digest of what the
wire parser relies on (the source of `parse` and `reset`, the patterns, states)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from nats.aio.client import Client
from nats.protocol import parser as nats_parser
from nats.protocol.parser import Parser

from dagnats.runtime.wire_parser import (
    CHECKED_PARSER_SHA256,
    WireParser,
    install,
    parser_digest,
)


class Failing:
    """A client whose `_process_<kind>` raises `error` once; records every call."""

    def __init__(self, kind: str, error: BaseException) -> None:
        self.kind, self.error, self.failed = kind, error, False
        self.events: list[tuple[object, ...]] = []

    def _call(self, kind: str, *arguments: object) -> None:
        self.events.append((kind, *arguments))
        if kind == self.kind and not self.failed:
            self.failed = True
            raise self.error

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes,
                           headers: bytes | None) -> None:  # fmt: skip
        self._call("msg", sid, subject, reply, data, headers)

    async def _process_ping(self) -> None:
        self._call("ping")

    async def _process_pong(self) -> None:
        self._call("pong")

    async def _process_info(self, info: dict[str, Any]) -> None:
        self._call("info", info)

    async def _process_err(self, message: str) -> None:
        self._call("err", message)


def run_reads(parser_class: type[Parser], kind: str, error: BaseException,
              reads: list[bytes]) -> tuple[list[tuple[object, ...]], list[object]]:  # fmt: skip
    client = Failing(kind, error)
    parser = parser_class(client)
    states: list[object] = []
    for data in reads:
        try:
            asyncio.run(parser.parse(data))
        except BaseException as raised:  # (the error is what is compared)
            states.append(type(raised))
        states.append((bytes(parser.buf), parser.state, parser.needed, parser.header_needed))
    return client.events, states


STREAM = b"+OK\r\nPONG\r\nMSG a 1 1\r\nx\r\nPING\r\nMSG b 2 1\r\ny\r\n"


@pytest.mark.parametrize("kind", ["ping", "pong", "msg", "err", "info"])
@pytest.mark.parametrize("error", [OSError("gone"), asyncio.InvalidStateError()])
def test_a_failing_callback_leaves_the_buffer_nats_py_leaves(
    kind: str, error: BaseException
) -> None:
    stream = STREAM + b"-ERR 'x'\r\nINFO {}\r\n"
    reads = [stream, b""]  # (the second read: what the parser does with what it kept)
    assert run_reads(WireParser, kind, error, reads) == run_reads(Parser, kind, error, reads)


@pytest.mark.parametrize("kind", ["ping", "pong"])
def test_a_cancelled_ping_or_pong_callback_leaves_the_buffer_nats_py_leaves(kind: str) -> None:
    reads = [STREAM, b""]
    error = asyncio.CancelledError()
    assert run_reads(WireParser, kind, error, reads) == run_reads(Parser, kind, error, reads)


def test_install_reads_with_the_wire_parser_on_the_nats_py_it_was_checked_against() -> None:
    client = Client()
    assert parser_digest() == CHECKED_PARSER_SHA256
    assert install(client) is True
    assert type(client._ps) is WireParser


async def _other_parse(self: Parser, data: bytes = b"") -> None:
    """A parse of another nats-py (a patch release that changed its parser)."""
    self.buf.extend(data)


def test_install_keeps_nats_py_parser_when_its_parse_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(nats_parser.Parser, "parse", _other_parse)
    client = Client()
    assert install(client) is False
    assert type(client._ps) is nats_parser.Parser


def test_install_keeps_nats_py_parser_when_a_pattern_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stricter = re.compile(b"\\AMSG\\s+([^\\s]+)\\s+(\\d+)\\s+(([^\\s]+)[^\\S\r\n]+)?(\\d+)\r\n")
    monkeypatch.setattr(nats_parser, "MSG_RE", stricter)
    client = Client()
    assert install(client) is False
    assert type(client._ps) is nats_parser.Parser


@pytest.mark.xfail(strict=True, reason="cosmetic: nats-py sets `needed` before it fails")
def test_a_header_size_too_long_for_int_leaves_the_size_nats_py_leaves() -> None:
    """nats-py sets `needed` from an HMSG line, then fails on its header size (over `int`'s
    4300 digits): its `needed` is the line's after the error, the wire parser's the one
    before (the client resets the parser after a ProtocolError: nothing reads it)."""
    stream = b"HMSG a 1 " + b"9" * 5000 + b" 7\r\n"
    reads = [stream]
    error = OSError("unused")
    assert run_reads(WireParser, "none", error, reads) == run_reads(Parser, "none", error, reads)
