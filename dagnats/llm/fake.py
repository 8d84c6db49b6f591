"""A fake model server: speaks OpenAI chat completions and Anthropic messages from a script,
with a request log. For tests and the offline example; no network beyond loopback, no key.

```
python -m dagnats.llm.fake --script script.json [--port 0] [--log requests.jsonl]
```
prints one JSON line `{"url": "http://127.0.0.1:PORT"}` and serves until SIGTERM/SIGINT.
OpenAI clients use `base_url=<url>/v1`, Anthropic clients `base_url=<url>`.

A script: `{"agents": [{"match": "text in the system prompt", "replies": [reply, ...]}]}`. The
first agent whose `match` is in the request's system prompt answers (an empty `match` answers
any); its reply is `replies[n]`, n = the number of assistant messages in the conversation (so
the server keeps no state per conversation: a turn asked again gets the same reply). A reply:
`text`, `tool_calls` (`[{"name", "arguments"}]`, or `arguments_text` for broken JSON),
`refusal`, `usage` (`[in, out]`), `pieces` (text chunks when streaming), `delay_ms` (before
answering), `chunk_delay_ms` (between streamed chunks), and `fail_first`: failures for the first
requests of that conversation at that turn (`{"status": 429, "retry_after": 1, "message": ...}`,
`{"status": 500}`, `{"malformed": true}`); `{key}` in a message is the request's API key.

The log: one entry per request (`GET /_log` returns them): provider, agent, turn, the
conversation's digest, stream, status, and `outcome` ("finished": the whole response was
written; "broken": the client went away first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Final

import msgspec

from dagnats.llm import fake_wire as wire

request_bytes_max: Final = 8 * 1024 * 1024
header_lines_max: Final = 100
log_entries_max: Final = 100_000
read_timeout_s: Final = 30.0


class _Never:
    def at_eof(self) -> bool:
        return False


_never: Final = _Never()


class FakeModelServer:
    """The server, in this event loop: `await start()`, `await stop()`; `log` its requests."""

    def __init__(self, script: dict[str, Any], *, log_path: Path | None = None) -> None:
        agents = script.get("agents")
        if not isinstance(agents, list) or not agents:
            raise ValueError("script.agents must be a non-empty list of {match, replies}")
        for index, agent in enumerate(agents):
            if not isinstance(agent.get("replies"), list):
                raise ValueError(f"script.agents[{index}].replies must be a list of replies")
        self.script = script
        self.log: list[dict[str, Any]] = []
        self.log_path = log_path
        self._asked: Counter[tuple[int, int, str]] = Counter()
        self._server: asyncio.Server | None = None
        self._gone: dict[int, asyncio.StreamReader] = {}
        self.url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._server = await asyncio.start_server(self._connection, host, port)
        bound = self._server.sockets[0].getsockname()
        self.url = f"http://{bound[0]}:{bound[1]}"
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)

    def finished(self) -> list[dict[str, Any]]:
        """The log's requests answered 200 in full."""
        return [
            e
            for e in self.log
            if e["outcome"] == "finished" and e["status"] == 200 and not e.get("scripted_failure")
        ]

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(_read_request(reader), timeout=read_timeout_s)
            if request is not None:
                self._gone[id(writer)] = reader  # EOF here: the client closed mid-stream
                await self._answer(request, writer)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._gone.pop(id(writer), None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(
        self, request: tuple[str, str, dict[str, str], bytes], writer: asyncio.StreamWriter
    ) -> None:
        method, path, headers, body = request
        if method == "GET" and path == "/_log":
            await _respond(writer, 200, json.dumps(self.log).encode())
            return
        provider = "openai" if path.endswith("/chat/completions") else "anthropic"
        if method != "POST" or not (
            path.endswith("/chat/completions") or path.endswith("/messages")
        ):
            await _respond(writer, 404, wire.openai_error(404, f"no route {method} {path}"))
            return
        try:
            document = json.loads(body)
        except ValueError:
            await _respond(writer, 400, wire.openai_error(400, "the request body is not JSON"))
            return
        await self._model_call(provider, headers, document, writer)

    async def _model_call(
        self,
        provider: str,
        headers: dict[str, str],
        document: dict[str, Any],
        writer: asyncio.StreamWriter,
    ) -> None:
        messages = document.get("messages", [])
        system = _system_of(provider, document)
        turn = sum(1 for m in messages if m.get("role") == "assistant")
        digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]
        agent_index = self._agent_of(system)
        stream = bool(document.get("stream"))
        entry: dict[str, Any] = {
            "n": len(self.log),
            "provider": provider,
            "agent": agent_index,
            "turn": turn,
            "digest": digest,
            "stream": stream,
            "status": 0,
            "outcome": "started",
            "model": document.get("model", ""),
        }
        self._record(entry)
        error = wire.openai_error if provider == "openai" else wire.anthropic_error
        if agent_index < 0:
            await self._send(
                entry, writer, 400, error(400, f"no script agent matches {system[:80]!r}")
            )
            return
        replies = self.script["agents"][agent_index]["replies"]
        if turn >= len(replies):
            await self._send(entry, writer, 400, error(400, f"the script has no reply {turn}"))
            return
        reply = replies[turn]
        key = (agent_index, turn, digest)
        asked = self._asked[key]
        self._asked[key] += 1
        await asyncio.sleep(reply.get("delay_ms", 0) / 1000)
        failures = reply.get("fail_first", [])
        if asked < len(failures):
            await self._failure(entry, writer, failures[asked], provider, headers)
            return
        usage = tuple(
            reply.get(
                "usage", (len(json.dumps(messages)) // 4, len(reply.get("text", "")) // 4 + 1)
            )
        )
        ids = wire.call_ids(provider, turn, len(reply.get("tool_calls", [])))
        model = str(document.get("model", "fake"))
        if not stream:
            build = wire.openai_whole if provider == "openai" else wire.anthropic_whole
            await self._send(entry, writer, 200, build(model, reply, ids, (usage[0], usage[1])))
            return
        events_of = wire.openai_events if provider == "openai" else wire.anthropic_events
        events = events_of(model, reply, ids, (usage[0], usage[1]), int(reply.get("pieces", 4)))
        await self._stream(entry, writer, events, reply.get("chunk_delay_ms", 0) / 1000)

    async def _failure(
        self,
        entry: dict[str, Any],
        writer: asyncio.StreamWriter,
        failure: dict[str, Any],
        provider: str,
        headers: dict[str, str],
    ) -> None:
        entry["scripted_failure"] = True
        if failure.get("malformed"):
            if entry["stream"]:
                event = b"data: {not json\n\n"
                if provider == "anthropic":
                    event = b"event: message_start\n" + event
                await self._stream(entry, writer, [event], 0.0)
            else:
                await self._send(entry, writer, 200, b'{"id": "x", not json')
            return
        status = int(failure.get("status", 500))
        key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
        message = str(failure.get("message", f"scripted failure {status}")).replace("{key}", key)
        error = wire.openai_error if provider == "openai" else wire.anthropic_error
        extra = {}
        if "retry_after" in failure:
            extra["retry-after"] = str(failure["retry_after"])
        await self._send(entry, writer, status, error(status, message), extra)

    def _agent_of(self, system: str) -> int:
        for index, agent in enumerate(self.script["agents"]):
            if str(agent.get("match", "")) in system:
                return index
        return -1

    def _record(self, entry: dict[str, Any]) -> None:
        if len(self.log) < log_entries_max:
            self.log.append(entry)

    def _flush(self, entry: dict[str, Any]) -> None:
        if self.log_path is not None:
            with self.log_path.open("a") as file:
                file.write(json.dumps(entry) + "\n")

    async def _send(
        self,
        entry: dict[str, Any],
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        extra: dict[str, str] | None = None,
    ) -> None:
        entry["status"] = status
        try:
            await _respond(writer, status, body, extra)
            entry["outcome"] = "finished"
        except (ConnectionError, OSError):
            entry["outcome"] = "broken"
        self._flush(entry)

    async def _stream(
        self,
        entry: dict[str, Any],
        writer: asyncio.StreamWriter,
        events: list[bytes],
        delay_s: float,
    ) -> None:
        entry["status"] = 200
        entry["outcome"] = "streaming"
        try:
            head = (
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                "transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            )
            writer.write(head.encode())
            await writer.drain()
            for event in events:
                writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                await writer.drain()
                if delay_s:
                    await asyncio.sleep(delay_s)
                if writer.is_closing() or self._gone.get(id(writer), _never).at_eof():
                    raise ConnectionResetError("the client went away")
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            entry["outcome"] = "finished"
        except (ConnectionError, OSError):
            entry["outcome"] = "broken"
        self._flush(entry)


def _system_of(provider: str, document: dict[str, Any]) -> str:
    if provider == "anthropic":
        system = document.get("system", "")
        if isinstance(system, list):
            return " ".join(str(block.get("text", "")) for block in system)
        return str(system)
    return " ".join(
        str(m.get("content", "")) for m in document.get("messages", []) if m.get("role") == "system"
    )


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], bytes] | None:
    line = await reader.readline()
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    for _ in range(header_lines_max):
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    if length > request_bytes_max:
        raise ConnectionError(f"request body of {length} bytes is over {request_bytes_max}")
    body = await reader.readexactly(length) if length else b""
    return method, path.split("?", 1)[0], headers, body


async def _respond(
    writer: asyncio.StreamWriter, status: int, body: bytes, extra: dict[str, str] | None = None
) -> None:
    reason = {
        200: "OK",
        400: "Bad Request",
        401: "Unauthorized",
        404: "Not Found",
        429: "Too Many Requests",
        500: "Internal Server Error",
    }.get(status, "Status")
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    lines += [f"{name}: {value}" for name, value in (extra or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    await writer.drain()


def load_script(path: Path) -> dict[str, Any]:
    """A script file (JSON).

    Raises:
        ValueError: naming the file and what is wrong.
    """
    try:
        script = msgspec.json.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError) as error:
        raise ValueError(f"script {path}: {error}") from None
    if not isinstance(script, dict):
        raise ValueError(f"script {path}: must be a JSON object with `agents`")
    return script


async def serve(script: dict[str, Any], port: int, log_path: Path | None) -> None:
    server = FakeModelServer(script, log_path=log_path)
    url = await server.start(port=port)
    print(json.dumps({"url": url}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dagnats.llm.fake", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--script", type=Path, required=True, help="the script (JSON)")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--log", type=Path, default=None, help="append each request here (JSONL)")
    arguments = parser.parse_args(argv)
    try:
        script = load_script(arguments.script)
        FakeModelServer(script)  # validates
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    asyncio.run(serve(script, arguments.port, arguments.log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
