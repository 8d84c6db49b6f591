"""`dagnats event publish`: external events for `wait_for_event` steps and `cancel_on`.

Imports `dagnats.cli.common` and the rest of the project, never `dagnats.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dagnats.cli.common import (
    JsonOption,
    UrlOption,
    emit_json,
    load_json_argument,
    out,
    run_async,
    with_client,
)


def register(event_app: typer.Typer) -> None:
    """Add `publish` to the `event` sub-app."""
    event_app.command("publish")(event_publish)


def event_publish(
    name: Annotated[str, typer.Argument(help="The event's name (e.g. order.paid).")],
    payload: Annotated[str | None, typer.Option("--payload", help="JSON payload.")] = None,
    payload_file: Annotated[Path | None, typer.Option(help="Read the payload from a file.")] = None,
    event_id: Annotated[
        str | None, typer.Option(help="Idempotency key: the same id again is one event.")
    ] = None,
    nats_url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Publish an external event to every run waiting for its name."""
    value = load_json_argument(payload, payload_file, "payload")
    seq = run_async(
        with_client(nats_url, lambda client: client.publish_event(name, value, event_id=event_id))
    )
    if as_json:
        emit_json({"event": name, "seq": seq})
    else:
        out.print(f"event {name!r} published (seq {seq})")
