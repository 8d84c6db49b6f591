"""A workflow's DAG drawn as SVG on the server: layered left to right, each step a box coloured
by its status AND labelled with it (a symbol and the word), so colour is never the only sign.

`layout(nodes)` places the nodes (layer = the longest path from a root, an iterative walk);
`render(nodes)` returns the SVG text, every name escaped. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Final

dag_steps_drawn_max: Final = 2_000  # the steps a drawing holds (workflow + dynamic steps)
node_width: Final = 168
node_height: Final = 46
gap_x: Final = 56
gap_y: Final = 18
margin: Final = 12
label_chars_max: Final = 22

STATUS_SYMBOLS: Final = {
    "pending": "○", "scheduled": "◔", "running": "▶", "retry_wait": "↻",
    "completed": "✓", "failed": "✗", "skipped": "⤼", "recovered": "✚",
    "definition": "□", "waiting": "⏸",
}  # fmt: skip


@dataclass(frozen=True)
class Node:
    """One step: its id, the ids it depends on, its status ("definition" when no run)."""

    step_id: str
    depends_on: tuple[str, ...]
    status: str = "definition"
    kind: str = "task"


def symbol(status: str) -> str:
    return STATUS_SYMBOLS.get(status, "•")


def layers(nodes: Sequence[Node]) -> dict[str, int]:
    """Each step's layer: 0 for a root, else one more than its deepest dependency.

    Dependencies naming no node are ignored; nodes come in a valid (acyclic) order or any
    order, the walk is iterative and bounded by the number of nodes squared at worst.
    """
    assert len(nodes) <= dag_steps_drawn_max, f"{len(nodes)} steps over {dag_steps_drawn_max}"
    known = {node.step_id: node for node in nodes}
    layer: dict[str, int] = {}
    for node in nodes:
        stack: list[tuple[str, bool]] = [(node.step_id, False)]
        visiting: set[str] = set()
        while stack:
            step_id, expanded = stack.pop()
            if step_id in layer:
                continue
            deps = [d for d in known[step_id].depends_on if d in known]
            if expanded:
                layer[step_id] = 1 + max((layer.get(d, 0) for d in deps), default=-1)
                visiting.discard(step_id)
                continue
            visiting.add(step_id)
            stack.append((step_id, True))
            stack.extend((d, False) for d in deps if d not in layer and d not in visiting)
    assert len(layer) == len(nodes)
    return layer


def _short(text: str) -> str:
    return text if len(text) <= label_chars_max else text[: label_chars_max - 1] + "…"


def render(nodes: Sequence[Node], *, title: str = "workflow DAG") -> str:
    """The SVG of `nodes`: boxes with the step id and `symbol status`, arrows for depends_on."""
    nodes = list(nodes[:dag_steps_drawn_max])
    layer = layers(nodes)
    rows: dict[int, int] = {}
    place: dict[str, tuple[int, int]] = {}
    for node in nodes:
        column = layer[node.step_id]
        row = rows.get(column, 0)
        rows[column] = row + 1
        place[node.step_id] = (
            margin + column * (node_width + gap_x),
            margin + row * (node_height + gap_y),
        )
    width = margin * 2 + (max(rows, default=0) + 1) * (node_width + gap_x) - gap_x
    height = margin * 2 + max(rows.values(), default=1) * (node_height + gap_y) - gap_y
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="dag" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
        f"<title>{escape(title)}</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>',
    ]
    for node in nodes:
        x, y = place[node.step_id]
        for dep in node.depends_on:
            if dep in place:
                dx, dy = place[dep]
                x0, y0, y1 = dx + node_width, dy + node_height // 2, y + node_height // 2
                bend = gap_x // 2
                parts.append(
                    f'<path class="edge" marker-end="url(#arrow)" '
                    f'd="M{x0},{y0} C{x0 + bend},{y0} {x - bend},{y1} {x},{y1}"/>'
                )
    for node in nodes:
        x, y = place[node.step_id]
        status = escape(node.status)
        parts.append(
            f'<g class="node status-{status}" data-step="{escape(node.step_id)}">'
            f"<title>{escape(node.step_id)} ({escape(node.kind)}): {status}</title>"
            f'<rect x="{x}" y="{y}" width="{node_width}" height="{node_height}" rx="6"/>'
            f'<text x="{x + 8}" y="{y + 19}" class="step-id">{escape(_short(node.step_id))}</text>'
            f'<text x="{x + 8}" y="{y + 37}" class="step-status">{symbol(node.status)} '
            f"{status}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)
