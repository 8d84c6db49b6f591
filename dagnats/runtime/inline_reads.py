"""A connection's reads parsed where they arrive: in the socket's `data_received`, not one
loop iteration later in nats-py's read-loop task.

nats-py reads through an `asyncio.StreamReader`: the socket's bytes are fed into the reader in
the selector's callback, which wakes the read loop's task, which runs in the next loop
iteration (a task step, an `epoll_wait` and the loop's bookkeeping: ~10-25 us on Python 3.11)
and parses them. A worker's task, a result's acknowledgement, a client's history message: each
came one iteration later than it could. Here, while the read loop waits on an empty reader
(nothing fed and not read yet, no end of file), the bytes are parsed at once by the client's
own parser (runtime/wire_parser `WireParser.parse`), in the selector's callback: the same
parser, callbacks and order, one iteration sooner. Any other time (the read loop holds bytes
or is parsing, a reconnect, a close, the client's unsent bytes near its `pending_size`: a send
would force a flush under `asyncio.wait_for`, which from Python 3.12 needs a task) they are
fed to the reader as before, so the bytes are parsed in the order they came whichever way they
go.

A parse that must wait (nats-py's own processing awaits something: a full flush queue, a
close) is finished by a task of its own while the socket's reading is paused (nothing is read
before it ends); in the chain benchmark none did. A parse error is what the read loop makes
of it: a `ProtocolError` or `OSError` goes to the client's `_process_op_err` (a reconnect, or
the close), any other error is logged as nats-py logs it and this connection's reading stops
(as nats-py's read loop ends). A selector callback has no current task: what the parse calls
(the client's processing, the runtime's raw handlers: set a future, append to a queue, start
a task) asks for none.

`install(client)` (before its first connect) wraps the client's read loop, so that each
connection (the first and each reconnect's) gets its `InlineReads` when its read loop starts;
only over nats-py's TCP transport with the `WireParser` (a client it was not installed on reads
as nats-py does). This module reads; it sends nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Final, cast

import nats.errors
from nats.aio.client import Client
from nats.aio.transport import TcpTransport

from dagnats.runtime.wire_parser import WireParser

log = logging.getLogger("nats.aio.client")  # (nats-py's read loop logs its errors there)
# Room left under the client's `pending_size` for what a read's parse sends (PONGs, flow-control
# answers, naks: each smaller than what asked for it, and one read is at most 256 KiB). With
# less, nats-py's `_send_command` would force a flush, under `asyncio.wait_for`: from Python
# 3.12 an `asyncio.timeout`, which raises in `data_received` (no task is current there).
pending_room_bytes_min: Final = 256 * 1024


class InlineReads:
    """One connection's socket read in its `data_received` (see the module docstring)."""

    __slots__ = ("_feed", "_finishing", "_socket", "client", "parser", "reader", "stopped")

    def __init__(self, client: Client, transport: TcpTransport) -> None:
        writer, reader = transport._io_writer, transport._io_reader
        assert writer is not None and reader is not None, "a connected transport"
        self.client = client
        self.parser = client._ps
        self.reader: Any = reader  # (its private state: `_buffer`, `_waiter`, `_eof`)
        self._socket = cast(asyncio.Transport, writer.transport)
        protocol: Any = self._socket.get_protocol()
        self._feed = protocol.data_received  # the reader's (feeds it, wakes the read loop)
        self._finishing: asyncio.Task[None] | None = None
        self.stopped = False
        protocol.data_received = self.data_received

    def data_received(self, data: bytes) -> None:
        """Parse `data` now when the read loop waits on an empty reader; else feed it."""
        reader, client = self.reader, self.client
        if (
            self._finishing is not None
            or reader._buffer
            or reader._waiter is None
            or reader._eof
            or self.stopped
            or client._ps is not self.parser
            or client.is_closed
            or client.is_reconnecting
            or client._pending_data_size + pending_room_bytes_min > client._max_pending_size > 0
        ):  # fmt: skip
            if not self.stopped:
                self._feed(data)
            return
        parse = self.parser.parse(data)
        try:
            waiting = parse.send(None)
        except StopIteration:
            return
        except Exception as error:
            self._failed(error)
            return
        self._socket.pause_reading()
        self._finishing = asyncio.get_running_loop().create_task(self._finish(parse, waiting))

    async def _finish(self, parse: Coroutine[Any, Any, None], waiting: object) -> None:
        """Drive a parse that waited to its end (as a task drives a coroutine: resumed once
        what it waits on is done), then read the socket again."""
        try:
            while True:
                if isinstance(waiting, asyncio.Future):
                    waiting._asyncio_future_blocking = False
                    await asyncio.wait((waiting,))
                else:  # (a bare yield: `asyncio.sleep(0)`)
                    await asyncio.sleep(0)
                waiting = parse.send(None)
        except StopIteration:
            pass
        except asyncio.CancelledError:
            parse.close()
            raise
        except Exception as error:
            self._failed(error)
        finally:
            self._finishing = None
            if not self._socket.is_closing() and not self.stopped:
                self._socket.resume_reading()

    def _failed(self, error: Exception) -> None:
        """What nats-py's read loop does with a parse's error (see the module docstring)."""
        self.stopped = True
        client = self.client
        if isinstance(error, nats.errors.ProtocolError | OSError):
            if isinstance(error, nats.errors.ProtocolError):
                error = nats.errors.ProtocolError()  # (as the read loop reports it)
            asyncio.get_running_loop().create_task(client._process_op_err(error))
            return
        log.error("nats: encountered error", exc_info=error)
        reading = client._reading_task
        if reading is not None:
            reading.cancel()


def install(client: Client) -> bool:
    """Parse `client`'s reads where they arrive (before its first connect; each connection's
    read loop installs its `InlineReads`); False when its parser is not a `WireParser`."""
    if not isinstance(client._ps, WireParser):
        return False
    read_loop = client._read_loop

    async def reading() -> None:
        transport = client._transport
        if (
            isinstance(transport, TcpTransport)
            and transport._io_writer is not None
            and transport._io_reader is not None
            and not transport._io_writer.transport.is_closing()
        ):  # fmt: skip
            InlineReads(client, transport)
        await read_loop()

    client._read_loop = reading  # type: ignore[method-assign]
    return True
