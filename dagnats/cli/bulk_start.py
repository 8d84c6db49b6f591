"""`dagnats run start NAME --inputs-file inputs.jsonl`: one run per line, all or nothing.

Every line is checked first (JSON as written, the payload limit, the workflow's input_schema,
the `--key` value present and not repeated); any problem refuses the whole file naming its
line, and no run is started. Then each line starts a run whose id is derived from the file
(the hash of its content and the line number) or, with `--key PATH`, from the workflow and the
value at that dotted path of the input, so running the same file again starts nothing new.
Bounded: `settings.bulk_start_lines_max` lines, `bulk_starts_in_flight_max` starts at once.
Imports `dagnats.cli.common` and the rest of the project, never `dagnats.cli`.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Final

import msgspec
from rich.progress import Progress

from dagnats import json_input
from dagnats.cli.common import err
from dagnats.client import Client
from dagnats.input_schema import input_errors
from dagnats.runtime import settings
from kernel import limits
from kernel.admission import value_at
from kernel.errors import DagnatsError
from kernel.workflow import WorkflowDef

problems_shown_max: Final = 20
run_id_hash_chars: Final = 24


class BulkLine(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the file, checked: its number (from 1), its run id and input."""

    line: int
    run_id: str
    input_json: bytes


class BulkInputError(DagnatsError):
    """The inputs file has problems (each names its line); no run was started."""

    hint = "fix the lines listed; nothing was started (the file is all or nothing)"

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        shown = "; ".join(problems[:problems_shown_max])
        more = f" (and {len(problems) - problems_shown_max} more)" if len(problems) > 20 else ""
        super().__init__(f"{source}: {len(problems)} problem(s): {shown}{more}")


def read_lines(path: Path) -> bytes:
    """The file's bytes, refused beyond the lines times the payload limit."""
    bytes_max = settings.bulk_start_lines_max * (limits.payload_bytes_max + 1)
    try:
        if path.stat().st_size > bytes_max:
            raise BulkInputError(str(path), [f"is over {bytes_max} bytes"])
        return path.read_bytes()
    except OSError as error:
        raise BulkInputError(str(path), [error.strerror or str(error)]) from None


def check_lines(
    data: bytes, workflow: WorkflowDef, *, key: str | None, source: str
) -> list[BulkLine]:
    """Every non-blank line checked, with its run id; BulkInputError listing each problem."""
    lines = data.splitlines()
    filled = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not filled:
        raise BulkInputError(source, ["has no input lines"])
    if len(filled) > settings.bulk_start_lines_max:
        rule = f"has {len(filled)} lines, over the limit of {settings.bulk_start_lines_max}"
        raise BulkInputError(source, [rule + " (split the file)"])
    file_hash = hashlib.sha256(data).hexdigest()[:run_id_hash_chars]
    problems: list[str] = []
    checked: list[BulkLine] = []
    seen_keys: dict[str, int] = {}
    for number, line in filled:
        try:
            value = json_input.loads(line, f"line {number}")
        except json_input.JsonInputError as error:
            problems.append(str(error))
            continue
        encoded = msgspec.json.encode(value)
        if len(encoded) > limits.payload_bytes_max:
            problems.append(f"line {number}: {len(encoded)} bytes is over the payload limit")
            continue
        problems += [f"line {number}: {e}" for e in input_errors(workflow, encoded)]
        run_id = f"{file_hash}-{number}"
        if key is not None:
            found = value_at(encoded, key)
            if found == "null":
                problems.append(f"line {number}: --key {key!r} is missing or null in the input")
                continue
            if found in seen_keys:
                first = seen_keys[found]
                problems.append(f"line {number}: --key {key!r} is {found}, as on line {first}")
                continue
            seen_keys[found] = number
            digest = hashlib.sha256(f"{workflow.name}\0{found}".encode()).hexdigest()
            run_id = f"k{digest[:run_id_hash_chars]}"
        checked.append(BulkLine(line=number, run_id=run_id, input_json=encoded))
    if problems:
        raise BulkInputError(source, problems)
    return checked


async def start_all(
    client: Client, workflow: WorkflowDef, lines: list[BulkLine], *, quiet: bool
) -> list[dict[str, object]]:
    """Start one run per line (idempotent on its run id), with a progress bar unless
    `quiet`; one result per line: its run id, or the error that refused it."""
    slots = asyncio.Semaphore(settings.bulk_starts_in_flight_max)
    results: list[dict[str, object]] = [{} for _ in lines]
    with Progress(console=err, disable=quiet, transient=True) as progress:
        task = progress.add_task(f"starting {workflow.name}", total=len(lines))

        async def one(index: int, line: BulkLine) -> None:
            async with slots:
                item: dict[str, object] = {"line": line.line, "run_id": line.run_id}
                try:
                    value = msgspec.json.decode(line.input_json)
                    await client.start(workflow.name, value, run_id=line.run_id)
                except DagnatsError as error:
                    item["error"] = str(error).splitlines()[0]
                results[index] = item
                progress.advance(task)

        await asyncio.gather(*(one(i, line) for i, line in enumerate(lines)))
    return results
