"""Step types: one module per type, each registering itself in the kernel's step table.

Importing this package registers every step type. Adding a step type means one new module
here, one import line below, its event formats in `kernel/events.py` (and its bounds in
`kernel/limits.py`), and its tests; nothing in `dagnats/` changes (see steps/log.py, added so).
"""

from steps import (
    agent_loop,
    approval,
    continue_as_new,
    log,
    map,
    planner,
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
    "sleep",
    "sub_workflow",
    "task",
    "wait_for_event",
    "wait_signal",
]
