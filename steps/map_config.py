"""The `map` step's config and how it reads its items. Pure: no I/O.

`read_items` walks `items_path` one object level at a time, keeping values as raw JSON, so an
item is handed to its task as the exact bytes of the input (no decode and re-encode of items).
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from kernel import limits
from kernel.errors import Problem, show_value
from kernel.workflow import StepDef
from steps.config_read import config_document, read_int, unknown_fields

CONFIG_FIELDS: Final = ("items_path", "max_items", "max_concurrency", "mode")
MODES: Final = ("fail_fast", "collect")
max_concurrency_default: Final = 100
Mode = Literal["fail_fast", "collect"]

_object_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_array_decoder = msgspec.json.Decoder(list[msgspec.Raw])


class MapConfig(msgspec.Struct, frozen=True, kw_only=True):
    items_path: str = ""
    max_items: Annotated[int, msgspec.Meta(ge=1, le=limits.map_items_max)] = limits.map_items_max
    max_concurrency: Annotated[int, msgspec.Meta(ge=1, le=limits.map_concurrency_max)] = (
        max_concurrency_default
    )
    mode: Mode = "fail_fast"


def read_config(step: StepDef, path: str) -> MapConfig | tuple[Problem, ...]:
    """The map's config, or every problem with it (and with its depends_on)."""
    document = config_document(step)
    problems: list[Problem] = []
    unknown_fields(document, CONFIG_FIELDS, path, problems)
    if len(step.depends_on) != 1:
        rule = "a map needs exactly one dependency: the step whose output holds the items"
        problems.append(
            Problem(path=f"{path}.depends_on", value=show_value(list(step.depends_on)), rule=rule)
        )
    items_path = document.get("items_path", "")
    if not isinstance(items_path, str) or (items_path and "" in items_path.split(".")):
        rule = "must be a dotted path of keys into the dependency's output ('' for all of it)"
        problems.append(
            Problem(path=f"{path}.config.items_path", value=show_value(items_path), rule=rule)
        )
        items_path = ""
    max_items = read_int(
        document, "max_items", path, problems,
        low=1, high=limits.map_items_max, default=limits.map_items_max,
    )  # fmt: skip
    concurrency = read_int(
        document, "max_concurrency", path, problems,
        low=1, high=limits.map_concurrency_max, default=max_concurrency_default,
    )  # fmt: skip
    mode = document.get("mode", "fail_fast")
    if mode not in MODES:
        rule = f"must be one of {', '.join(MODES)}"
        problems.append(Problem(path=f"{path}.config.mode", value=show_value(mode), rule=rule))
        mode = "fail_fast"
    if problems:
        return tuple(problems)
    return MapConfig(
        items_path=str(items_path),
        max_items=max_items,
        max_concurrency=concurrency,
        mode="collect" if mode == "collect" else "fail_fast",
    )


def read_items(payload: msgspec.Raw, path: str) -> tuple[msgspec.Raw, ...] | str:
    """The array at `path` in `payload`, item by item as raw JSON; or why there is none."""
    data = bytes(payload)
    walked: list[str] = []
    for key in path.split(".") if path else ():
        where = ".".join(walked) or "the top"
        try:
            fields = _object_decoder.decode(data)
        except msgspec.DecodeError:
            return f"the input is not an object at {where}, so items_path {path!r} cannot be read"
        if key not in fields:
            known = ", ".join(sorted(fields)[:10])
            return f"the input has no field {key!r} at {where} (items_path {path!r}; has: {known})"
        data = bytes(fields[key])
        walked.append(key)
    try:
        return tuple(_array_decoder.decode(data))
    except msgspec.DecodeError:
        shown = data[:80].decode(errors="replace")
        return f"items_path {path!r} holds {shown}, not an array of items"
