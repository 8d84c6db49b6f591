"""`dagnats workflow schema`: print (or write) the JSON Schema of the workflow format.

The schema is generated from the model (`kernel.workflow.schema`); a copy is committed and
shipped beside the examples (`examples/workflow.schema.json`), which their `$schema` names.
Imports `dagnats.cli.common` and the kernel, never `dagnats.cli`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from dagnats.cli.common import err, fail
from kernel.workflow.schema import schema_json


def register(workflow_app: typer.Typer) -> None:
    """Add `schema` to `dagnats workflow`."""
    workflow_app.command("schema")(schema)


def schema(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write it to FILE instead of stdout.")
    ] = None,
) -> None:
    """Print the JSON Schema of workflow files (for editors: point a file's `$schema` at it)."""
    text = schema_json()
    if output is None:
        sys.stdout.buffer.write(text)
        sys.stdout.flush()
        return
    try:
        output.write_bytes(text)
    except OSError as error:
        message = f"--output {output}: {error.strerror or error}"
        raise fail(message, "pass a writable path") from None
    err.print(f"wrote {output} ({len(text)} bytes)", highlight=False)
