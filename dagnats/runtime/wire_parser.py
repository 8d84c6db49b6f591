"""A cheaper reader of the NATS wire for nats-py's client, with nats-py's own semantics.

nats-py's `Parser.parse` (nats/protocol/parser.py) copies every read into a bytearray, tries
its regular expressions in a fixed order on each control line (a task message, an HMSG, fails
the MSG one first), fills a dict per message, copies each payload twice (a bytearray slice,
then `bytes`) and deletes each frame from the front of its buffer; its MSG/HMSG patterns scan
a line byte by byte in the regex engine. `WireParser` reads a read that starts on a frame's
boundary where it lies (no copy into the buffer), each payload with one slice, and keeps only
the partial frame a read ended in. A plain MSG or HMSG line (`_plain_line` says which lines
are, and why nats-py's pattern reads the same fields from them) is read with `find` and
`split`; any other is read with nats-py's own pattern (anchored at a position instead of the
buffer's start, so it matches the same bytes as in nats-py). Control lines other than MSG and
HMSG (+OK, PING, PONG, -ERR, INFO) and an unknown line are read as nats-py reads them: the
same patterns, callbacks, order of the callback and the consumption of the line, the same
`ProtocolError`s. Measured: about 2% of a worker's instructions a chain step (callgrind).

Its state between reads is nats-py's (`buf`, `state`, `needed`, `header_needed`, `msg_arg`):
what a read leaves unread is in `buf`, so a frame split across reads in any way ends as in
nats-py, and `reset()` (the client's, at a reconnect) is nats-py's. A callback that resets the
parser ends the read of the bytes in hand, as in nats-py (they belong to the lost socket).
Like nats-py's parser it does not check a payload's size against the server's maximum.

`install(client)` puts one on a client before its first connect (nats-py 2.16 internals:
`Client._ps`, called only by its read loop, and the client's `_process_*` methods, looked up
at each call since runtime/log_read swaps `_process_msg`), when nats-py's parser is the one it
was checked against (`CHECKED_PARSER_SHA256`); another nats-py (a patch release that changed
its parser) keeps its own parser, and says so once in the log. This module reads what the server
sent and hands it to the client; it sends nothing.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
from collections.abc import Awaitable
from typing import Final

from nats.aio.client import Client
from nats.errors import ProtocolError
from nats.protocol import parser as nats_parser

log = logging.getLogger("dagnats.wire_parser")
CONTROL_LINE: Final = nats_parser.AWAITING_CONTROL_LINE
PAYLOAD: Final = nats_parser.AWAITING_MSG_PAYLOAD
CRLF: Final = b"\r\n"
CRLF_SIZE: Final = len(CRLF)
CONTROL_LINE_MAX: Final = nats_parser.MAX_CONTROL_LINE_SIZE


def _at_position(pattern: re.Pattern[bytes]) -> re.Pattern[bytes]:
    """nats-py's `pattern` (anchored at the buffer's start, `\\A`) anchored where `match`
    starts instead: on the same bytes from that position it matches exactly as nats-py's.
    (A pattern without the anchor is another nats-py's: `install` keeps its parser then.)"""
    text = pattern.pattern
    return re.compile(text[2:] if text.startswith(b"\\A") else text, pattern.flags)


MSG_LINE: Final = _at_position(nats_parser.MSG_RE)
HMSG_LINE: Final = _at_position(nats_parser.HMSG_RE)
OK_LINE: Final = _at_position(nats_parser.OK_RE)
ERR_LINE: Final = _at_position(nats_parser.ERR_RE)
PING_LINE: Final = _at_position(nats_parser.PING_RE)
PONG_LINE: Final = _at_position(nats_parser.PONG_RE)
INFO_LINE: Final = _at_position(nats_parser.INFO_RE)
_M: Final = ord("M")
_H: Final = ord("H")
_CR: Final = ord("\r")
_ZERO: Final = ord("0")
_NINE: Final = ord("9")
_SPACE_OR_DIGIT: Final = frozenset(b" \t\n\r\x0b\x0c0123456789")
# A MSG or HMSG line read: (where its payload starts, subject, sid, reply, bytes after the
# line before their CRLF, header bytes of them).
MessageLine = tuple[int, bytes, int, bytes, int, int]
# The numbers of control lines (sids, sizes) read already, as `int` reads them: an `int` of
# bytes costs several dict look-ups, and a connection's sids and sizes repeat.
numbers_kept_max: Final = 4096
number_digits_kept_max: Final = 10  # (a sid or a size; a longer number is read, not kept)
_numbers: dict[bytes, int] = {}
# What a read handed to `_other_line` came to: a line consumed, or more bytes needed.
_NEED_MORE: Final = -1


class WireParser(nats_parser.Parser):
    """nats-py's parser, read the cheaper way (see the module docstring)."""

    async def parse(self, data: bytes = b"") -> None:
        """Read `data` after what earlier reads left: hand each whole message to the client
        (`_process_msg`), answer the other lines as nats-py does, keep the partial frame.

        Raises:
            nats.errors.ProtocolError: a malformed MSG or HMSG line, or an unknown line (as
                nats-py raises them).
        """
        buf = self.buf
        held = bool(buf)
        if held:
            buf.extend(data)
            if self.state == PAYLOAD and len(buf) < self.needed + CRLF_SIZE:
                return  # (a big message still arriving: nothing to read yet)
            data = bytes(buf)  # one copy; each slice of it is then one copy
        elif not data:
            return
        elif type(data) is not bytes:
            data = bytes(data)
        state, size, pos = self.state, len(data), 0
        needed, header_needed = self.needed, self.header_needed
        subject = sid = reply = None
        if state == PAYLOAD:
            arguments = self.msg_arg
            subject, sid, reply = arguments["subject"], arguments["sid"], arguments["reply"]
        try:
            while True:  # (each turn reads a frame, or a line, or stops: bounded by `size`)
                if state == CONTROL_LINE:
                    if pos >= size:
                        break
                    read = _message_line(data, pos)
                    if read is None:
                        after, pos, call = self._other_line(data, pos)
                        if after == _NEED_MORE:
                            break
                        if call is not None:
                            await call
                            if self.buf is not buf:
                                return  # (reset by the callback: these bytes are done with)
                        pos = after
                        continue
                    pos, subject, sid, reply, needed, header_needed = read
                    state = PAYLOAD
                end = pos + needed
                if size < end + CRLF_SIZE:
                    break  # (wait for the rest of the payload)
                if header_needed > 0:
                    headers: bytes | None = data[pos : pos + header_needed]
                    payload = data[pos + header_needed : end]
                    header_needed = 0
                else:
                    headers, payload = None, data[pos:end]
                pos, state = end + CRLF_SIZE, CONTROL_LINE
                await self.nc._process_msg(sid, subject, reply, payload, headers)
                if self.buf is not buf:
                    return  # (reset by the callback: these bytes are done with)
        finally:
            if self.buf is buf:
                self.state, self.needed, self.header_needed = state, needed, header_needed
                if state == PAYLOAD:
                    arguments = self.msg_arg
                    arguments["subject"], arguments["sid"] = subject, sid
                    arguments["reply"] = reply
                if held:
                    del buf[:pos]
                elif pos < size:
                    buf += memoryview(data)[pos:]

    def _other_line(self, data: bytes, pos: int) -> tuple[int, int, Awaitable[None] | None]:
        """Read the control line at `pos` that is no MSG or HMSG as nats-py does (its patterns
        in its order): (where the next line starts or `_NEED_MORE`, where the read stands
        while the client's call for the line runs, that call or None). nats-py consumes a
        PING or PONG before its call, an -ERR or INFO after (a call that fails leaves it).

        Raises:
            nats.errors.ProtocolError: an unknown line (a CRLF within the control line size).
        """
        nc = self.nc
        if ok := OK_LINE.match(data, pos):
            return ok.end(), pos, None
        if err := ERR_LINE.match(data, pos):
            return err.end(), pos, nc._process_err(err.groups()[0].decode().lower())
        if ping := PING_LINE.match(data, pos):
            return ping.end(), ping.end(), nc._process_ping()
        if pong := PONG_LINE.match(data, pos):
            return pong.end(), pong.end(), nc._process_pong()
        if info := INFO_LINE.match(data, pos):
            return info.end(), pos, nc._process_info(json.loads(info.groups()[0].decode()))
        if len(data) - pos < CONTROL_LINE_MAX and data.find(CRLF, pos) >= 0:
            raise ProtocolError("nats: unknown protocol")
        return _NEED_MORE, pos, None


def _message_line(data: bytes, pos: int) -> MessageLine | None:
    """The MSG or HMSG line at `pos`, read as nats-py's patterns read `data[pos:]`: (where
    its payload starts, subject, sid, reply, bytes after the line before their CRLF, header
    bytes of them); None when no such line is there (yet).

    Raises:
        nats.errors.ProtocolError: the sid is not a number ("nats: malformed MSG").
    """
    first = data[pos]
    if first not in (_H, _M):
        return None
    quick = _plain_line(data, pos, first)
    if quick is not None:
        return quick
    line = (HMSG_LINE if first == _H else MSG_LINE).match(data, pos)
    if line is None:
        return None
    try:
        if first == _M:
            subject, sid, _, reply, needed = line.groups()
            header_needed = 0
        else:
            subject, sid, _, reply, header_size, needed = line.groups()
            header_needed = _number(header_size)
        return line.end(), subject, _number(sid), reply or b"", _number(needed), header_needed
    except Exception:
        raise ProtocolError("nats: malformed MSG") from None


def _plain_line(
    data: bytes, pos: int, first: int
) -> tuple[int, bytes, int, bytes, int, int] | None:
    """The MSG or HMSG line at `pos` when it is plain, read without the pattern; None when
    it is not (the pattern reads it then).

    Plain: the line ends at the first LF after `pos`, with a CR before it and no other CR
    in it, its last byte is a digit, its fields split by whitespace count as the pattern's
    (MSG: 4 or 5, HMSG: 5 or 6) with the sizes all digits; for an HMSG without a reply, the
    byte after the line (if any) is neither whitespace nor a digit. The pattern's only match
    of `data[pos:]` is then these fields: its optional reply group fails at the CR (MSG) or
    at the next line's first byte (HMSG), and every other field is a maximal run of
    non-whitespace.

    Raises:
        nats.errors.ProtocolError: the sid is not a number ("nats: malformed MSG").
    """
    end = data.find(b"\n", pos)
    if end < 0 or data[end - 1] != _CR or data.find(b"\r", pos, end - 1) >= 0:
        return None
    if not _ZERO <= data[end - 2] <= _NINE:
        return None
    fields = data[pos : end - 1].split()
    count = len(fields)
    if first == _M:
        if fields[0] != b"MSG" or not 4 <= count <= 5:
            return None
        header_size, reply = b"0", fields[3] if count == 5 else b""
    else:
        if fields[0] != b"HMSG" or not 5 <= count <= 6:
            return None
        if count == 5 and end + 1 < len(data) and data[end + 1] in _SPACE_OR_DIGIT:
            return None  # (the pattern may read the next line as this one's size)
        header_size, reply = fields[count - 2], fields[3] if count == 6 else b""
    needed = fields[count - 1]
    if not (needed.isdigit() and header_size.isdigit()):
        return None
    numbers = _numbers
    try:
        sid = numbers.get(fields[2]) or int(fields[2])
        needed_number = numbers.get(needed) or _number(needed)
        return (
            end + 1,
            fields[1],
            sid,
            reply,
            needed_number,
            numbers.get(header_size) or _number(header_size),
        )
    except ValueError:
        raise ProtocolError("nats: malformed MSG") from None


def _number(text: bytes) -> int:
    """`int(text)`; kept in `_numbers` while it has room, when `text` is all ASCII digits
    (so a number found there is one the patterns' `\\d+` read).

    Raises:
        ValueError: `text` is no number `int` reads.
    """
    number = _numbers.get(text)
    if number is None:
        number = int(text)
        if (
            len(text) <= number_digits_kept_max
            and len(_numbers) < numbers_kept_max
            and text.isdigit()
        ):
            _numbers[text] = number
    return number


# What `WireParser` was checked against, nats-py 2.16.0's (`parser_digest`).
CHECKED_PARSER_SHA256: Final = "90f3ca4afa6695d72995f898eb3442a8dc29c1e1427ca8763e09ec0916e0671d"
_PATTERNS: Final = ("MSG_RE", "HMSG_RE", "OK_RE", "ERR_RE", "PING_RE", "PONG_RE", "INFO_RE")
_told_other_parser: list[str] = []  # (another parser's digest, logged once: at most one)


def parser_digest() -> str:
    """A digest of what `WireParser` relies on in nats-py's parser: the source of its `parse`
    and `reset`, its patterns, states and control line size ("" when the source is not
    there to read)."""
    try:
        parts = [inspect.getsource(nats_parser.Parser.parse)]
        parts.append(inspect.getsource(nats_parser.Parser.reset))
        for name in _PATTERNS:
            parts.append(getattr(nats_parser, name).pattern.decode("latin-1"))
    except (OSError, TypeError, AttributeError):
        return ""
    states = (nats_parser.AWAITING_CONTROL_LINE, nats_parser.AWAITING_MSG_PAYLOAD)
    parts.append(repr((*states, nats_parser.MAX_CONTROL_LINE_SIZE)))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def install(client: Client) -> bool:
    """Read `client`'s wire with a `WireParser` (before its first connect) when nats-py's
    parser is the one it was checked against; else keep nats-py's (logged once). Whether
    it did."""
    assert type(client._ps) is nats_parser.Parser, type(client._ps)
    digest = parser_digest()
    if digest != CHECKED_PARSER_SHA256:
        if not _told_other_parser:
            _told_other_parser.append(digest)
            log.warning("nats-py's wire parser is not the one runtime/wire_parser was checked "
                        "against (digest %r): its own parser reads the wire", digest)  # fmt: skip
        return False
    client._ps = WireParser(client)
    return True
