"""How `dagnats run show` shows a run's continue-as-new lineage, its pending approvals and its
history-size warning."""

from __future__ import annotations

from typing import Any

import msgspec
from rich.console import Console

from dagnats.client.chains import ChainLink, history_warning
from kernel.state import RunState
from steps import approvals


def add_lineage(document: dict[str, Any], state: RunState, chain: list[ChainLink]) -> None:
    """Add `lineage` (when the run is part of a chain) and `warnings` to a JSON document."""
    if chain:
        document["lineage"] = [msgspec.to_builtins(link) for link in chain]
    warning = history_warning(state)
    if warning:
        document["warnings"] = [warning]


def print_lineage(out: Console, err: Console, state: RunState, chain: list[ChainLink]) -> None:
    """Print the chain, root first, marking this run; then the history-size warning."""
    if chain:
        out.print(f"lineage (chain root {chain[0].run_id}):", highlight=False)
        for link in chain:
            mark = "  <- this run" if link.run_id == state.run_id else ""
            out.print(
                f"  {link.chain_index:>4}  {link.run_id}  {link.workflow}  {link.status}"
                f"  ({link.event_count} events){mark}",
                highlight=False,
            )
    for approval in approvals.pending(state):
        out.print(
            f"  ? approval {approval.key}: {approval.question}  "
            f"(dagnats approval approve|reject {state.run_id} {approval.step_id})",
            highlight=False,
        )
    warning = history_warning(state)
    if warning:
        err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
