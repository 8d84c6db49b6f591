"""`dagnats status`: the server, the engines, the projections (position and lag), the workers,
the streams and the work queues, in one screen (rich), or as JSON with `--json`.

It connects as a client (runtime/roles.py: stream info and the `dagnats_projections` bucket,
where each serve keeps its engine's record; see dagnats/observe/status.py) and reads the query
tables from the data dir when they are there (pending approvals). Imports `dagnats.cli.common`
and the rest of the project, never `dagnats.cli`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Final

import msgspec
import typer
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from dagnats.cli.common import (
    DataDirOption,
    JsonOption,
    UrlOption,
    emit_json,
    out,
    run_async,
    with_client,
)
from dagnats.client import Client
from dagnats.observe.status import EngineRecord, Facts, collect
from dagnats.runtime import projector
from dagnats.runtime.connection import default_data_dir, resolve_url
from dagnats.runtime.serve import redact_url

workers_shown_max: Final = 20  # worker ids listed on the screen (--json has them all)


def register(app: typer.Typer) -> None:
    """Add `status` to the `dagnats` app."""
    app.command("status")(status)


def status(
    data_dir: DataDirOption = None,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """The server, engine, projections (position, lag), workers, streams and queues."""
    where = (data_dir or default_data_dir()).expanduser()
    sqlite = where / projector.SQLITE_FILE

    async def action(client: Client) -> Facts:
        connection = client.connection
        url = redact_url(resolve_url(nats_url))
        return await collect(connection.nc, connection.js, url=url, sqlite_path=sqlite)

    facts = run_async(with_client(nats_url, action))
    if as_json:
        emit_json(msgspec.to_builtins(facts))
        return
    out.print(render_status(facts, sqlite))


def render_status(facts: Facts, sqlite: Path) -> RenderableType:
    """The one screen of `dagnats status`."""
    server = Text.assemble(
        ("server   ", "bold"), f"{facts.server.url}  nats-server {facts.server.version}  ",
        f"{facts.server.streams} streams, {facts.server.consumers} consumers, ",
        f"{_bytes(facts.server.storage_bytes)} stored",
    )  # fmt: skip
    parts: list[RenderableType] = [server, _engines_line(facts)]
    workers = facts.workers
    shown = ", ".join(workers[:workers_shown_max]) + (" …" if len(workers) > workers_shown_max
                                                        else "")  # fmt: skip
    parts.append(Text.assemble(("workers  ", "bold"), f"{len(workers)} live", f": {shown}"
                               if workers else " (none started an attempt lately)"))  # fmt: skip
    pending = (
        str(facts.approvals_pending) if facts.approvals_pending is not None
        else f"unknown (no query tables at {sqlite})"
    )  # fmt: skip
    parts.append(Text.assemble(("pending approvals  ", "bold"), pending))
    parts.extend([_projections(facts), _streams(facts), _queues(facts)])
    return Group(*parts)


def _engines_line(facts: Facts) -> Text:
    line = Text("engine   ", style="bold")
    if not facts.engines:
        line.append("none has reported (is `dagnats serve` running?)", style="red")
        return line
    for index, engine in enumerate(facts.engines):
        if index:
            line.append("\n         ")
        line.append_text(_engine(engine, facts.at_ms))
    for owner, partitions in facts.partitions.items():  # (a partitioned deployment)
        owned = ",".join(map(str, partitions)) or "none yet"
        line.append(f"\n         {owner} owns partitions {owned}")
    return line


def _engine(engine: EngineRecord, at_ms: int) -> Text:
    ago_s = max(0, at_ms - engine.updated_at_ms) // 1000
    if engine.stale:
        return Text(f"{engine.engine_id}: DOWN (last report {ago_s} s ago)", style="red")
    up_s = max(0, at_ms - engine.started_at_ms) // 1000
    text = Text(f"{engine.engine_id}: up ", style="green")
    text.append(
        f"{_duration(up_s)}, {engine.cached_runs} runs cached, "
        f"{engine.counters.get('applied', 0)} decisions applied, {engine.parked} parked, "
        f"reported {ago_s} s ago"
    )
    return text


def _projections(facts: Facts) -> Table:
    table = Table("projection", "kind", "position", "lag", "updated (UTC)", title="projections",
                  title_justify="left")  # fmt: skip
    for projection in facts.projections:
        lag = Text(str(projection.lag), style="yellow" if projection.lag else "")
        table.add_row(projection.name, projection.kind, str(projection.position), lag,
                      _time(projection.updated_at_ms))  # fmt: skip
    return table


def _streams(facts: Facts) -> Table:
    table = Table("stream", "messages", "size", "consumers", title="streams", title_justify="left")
    for stream in facts.streams:
        table.add_row(stream.name, str(stream.messages), _bytes(stream.bytes),
                      str(stream.consumers))  # fmt: skip
    return table


def _queues(facts: Facts) -> Table:
    table = Table("queue", "waiting or in flight", title="work queues", title_justify="left")
    for queue, depth in facts.queues.items():
        table.add_row(queue, str(depth))
    return table


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _time(ms: int | None) -> str:
    if not ms:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
