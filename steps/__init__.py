"""steps/: the behaviour of each step type, one module each, registered in the kernel's table.

What lives here: the step types (`task`, `sleep`, `wait_signal`, `wait_for_event`,
`sub_workflow`, `map`, `planner`, `approval`, `continue_as_new`, `agent_loop`, `log`), each
with its typed config and its decide, evolve, react and resume parts; and what several share
(`base.py`: the decision draft and an attempt's common parts; `approvals.py`; `continuation.py`;
`cron.py` and `timestamps.py`). Importing this package registers every step type.

Adding a step type means one new module here, one import line below, its event formats in
`kernel/events.py` (and its bounds in `kernel/limits.py`), and its tests; nothing in
`dagnats/` changes (`log.py` was added so).

Imports: `kernel` and `steps` only, pure like the kernel; the kernel reaches this package only
through `kernel/registry.py`; `dagnats` may import it.
"""

from steps import (
    agent_loop,
    approval,
    continue_as_new,
    log,
    map,
    planner,
    respond,
    sleep,
    sub_workflow,
    task,
    wait_for_event,
    wait_signal,
)

__all__ = [
    "agent_loop",
    "approval",
    "continue_as_new",
    "log",
    "map",
    "planner",
    "respond",
    "sleep",
    "sub_workflow",
    "task",
    "wait_for_event",
    "wait_signal",
]
