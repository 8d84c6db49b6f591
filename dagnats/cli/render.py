"""How runs, histories and workflows look in a terminal (rich) and as JSON (--json)."""

from __future__ import annotations

from typing import Any, Final

import msgspec
from rich.table import Table
from rich.text import Text

from kernel.admission_tasks import show_deferral
from kernel.commands import AnyCommand, DecideAll, StoredCommand
from kernel.events import Decision
from kernel.state import RunState, StepState
from kernel.workflow import WorkflowDef

batch_commands_shown_max: Final = 4  # a DecideAll's commands named in `dagnats run history`

STATUS_STYLES = {
    "completed": "green",
    "recovered": "green",
    "running": "cyan",
    "scheduled": "cyan",
    "retry_wait": "yellow",
    "compensating": "yellow",
    "skipped": "dim",
    "pending": "dim",
    "failed": "red",
    "compensate_failed": "red",
    "cancelled": "magenta",
    "continued_as_new": "blue",
    "terminated": "magenta",
}
output_chars_max = 60


def styled(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def _short(raw: msgspec.Raw | None) -> str:
    if raw is None:
        return ""
    text = bytes(raw).decode(errors="replace")
    return text if len(text) <= output_chars_max else text[: output_chars_max - 1] + "…"


def step_row(step: StepState) -> list[Any]:
    detail = _short(step.output)
    if step.error is not None and step.status != "completed":
        detail = f"{step.error.kind}: {step.error.message}"
    return [step.step_id, styled(step.status), str(step.attempt or ""), detail]


def run_table(state: RunState) -> Table:
    """The steps of a run with their status, attempt and output or error."""
    name = state.workflow.name if state.workflow is not None else "?"
    title = Text.assemble(f"run {state.run_id} · {name} · ", styled(state.status))
    table = Table(title=title, title_justify="left", expand=False)
    for column in ("step", "status", "attempt", "output / error"):
        table.add_column(column)
    live = _live_details(state)
    deferred = {d.step_id: show_deferral(d) for d in state.deferred}
    for step in state.steps:
        row = step_row(step)
        if step.step_id in live and step.status in ("scheduled", "running", "retry_wait"):
            row[-1] = live[step.step_id]
        if step.step_id in deferred and step.status == "scheduled":
            row[1] = styled(deferred[step.step_id])  # rate_limited, waiting_for_slot
        table.add_row(*row)
    if state.error is not None and state.status != "running":
        table.caption = f"{state.error.kind}: {state.error.message}"
    return table


def _live_details(state: RunState) -> dict[str, str]:
    """What an active agent loop or approval step is doing now, by step id (for live views)."""
    details: dict[str, str] = {}
    for agent in state.dynamic.agents:
        tools = ", ".join(f"{tool.name}:{tool.status}" for tool in agent.tools)
        usage = f"{agent.tokens_in + agent.tokens_out} tokens, cost {agent.cost:g}"
        text = f"turn {agent.turn} ({agent.phase}); {agent.tool_calls} tool call(s); {usage}"
        details[agent.step_id] = text + (f"; tools: {tools}" if tools else "")
    for approval in state.approvals:
        if not approval.decision:
            details[approval.step_id] = f"awaiting approval {approval.key}: {approval.question}"
    for deferral in state.deferred:  # flow control (kernel/admission_tasks.py)
        until = f" until {deferral.until_ms} ms" if deferral.until_ms is not None else ""
        details[deferral.step_id] = f"{show_deferral(deferral)}{until}"
    return details


def runs_table(states: list[RunState]) -> Table:
    table = Table(title="runs", title_justify="left")
    for column in ("run", "workflow", "status", "steps done", "started (ms)"):
        table.add_column(column)
    for state in states:
        done = sum(1 for s in state.steps if s.status in ("completed", "skipped", "recovered"))
        name = state.workflow.name if state.workflow is not None else "?"
        table.add_row(
            state.run_id,
            name,
            styled(state.status),
            f"{done}/{len(state.steps)}",
            str(state.started_at_ms),
        )
    return table


def history_table(decisions: list[tuple[int, Decision]]) -> Table:
    table = Table(title="history", title_justify="left")
    for column in ("seq", "command", "events"):
        table.add_column(column)
    for seq, decision in decisions:
        events = ", ".join(_event_label(event) for event in decision.events)
        table.add_row(str(seq), _command_label(decision.command), events)
    return table


def _command_label(command: StoredCommand) -> str:
    """A history message's command: its type (and step#attempt); a DecideAll's count and its
    first `batch_commands_shown_max` commands, by tag."""
    if isinstance(command, DecideAll):
        shown = [_sub_label(each) for each in command.commands[:batch_commands_shown_max]]
        more = len(command.commands) - len(shown)
        return (
            f"DecideAll({len(command.commands)}): " + ", ".join(shown) + (", ..." if more else "")
        )
    label = type(command).__name__
    step = getattr(command, "step_id", "")
    if step:
        label += f" {step}#{getattr(command, 'attempt', 0)}"
    return label


def _sub_label(command: AnyCommand) -> str:
    tag = str(type(command).__struct_config__.tag)
    step = getattr(command, "step_id", "")
    return f"{tag} {step}#{getattr(command, 'attempt', 0)}" if step else tag


def _event_label(event: object) -> str:
    tag = type(event).__struct_config__.tag  # type: ignore[attr-defined]
    step = getattr(event, "step_id", "")
    attempt = getattr(event, "attempt", 0)
    if step and attempt:
        return f"{tag}({step}#{attempt})"
    if step:
        return f"{tag}({step})"
    return str(tag)


def to_plain(value: msgspec.Struct) -> Any:
    """A struct as plain JSON values (raw JSON payloads become values)."""
    return msgspec.json.decode(msgspec.json.encode(value))


def state_document(state: RunState) -> dict[str, Any]:
    """A run state as plain JSON values (for --json), the workflow by name only."""
    document: dict[str, Any] = to_plain(msgspec.structs.replace(state, workflow=None))
    document["workflow"] = state.workflow.name if state.workflow is not None else None
    document.pop("step_defs", None)
    return document


def workflow_document(workflow: WorkflowDef) -> dict[str, Any]:
    from kernel.workflow import workflow_to_document

    return workflow_to_document(workflow)
