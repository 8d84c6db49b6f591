"""Step types: one module per type, each registering itself in the kernel's step table.

Importing this package registers every step type. Adding a step type means one new module
here, one import line below, its event tags in `kernel/events.py`, and its tests.
"""

from steps import (  # noqa: F401  (registers them)
    agent_loop,
    approval,
    continue_as_new,
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
    "map",
    "planner",
    "sleep",
    "sub_workflow",
    "task",
    "wait_for_event",
    "wait_signal",
]
