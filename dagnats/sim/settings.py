"""Bounds and defaults of the simulator, named once (units last, like `kernel.limits`).

Everything a simulated seed does is bounded: its scheduler steps, its virtual time, its
processes, its trace. The queue and log semantics reuse the runtime's own settings
(`dagnats.runtime.settings`: ack waits, delivery bounds, duplicate windows), so the simulated
substrate behaves like the real one. Nothing here may do I/O.
"""

from typing import Final

from dagnats.runtime import settings as runtime

# Virtual time starts here (2026-01-01T00:00:00Z), so `at_ms` stamps look real.
epoch_ms: Final = 1_767_225_600_000
# The longest a seed may simulate: its runs' bound plus `run_bound_slack_ms`, at most this.
horizon_ms_max: Final = 2 * 365 * 24 * 3_600_000
# Scheduler steps of one seed (each step is one engine batch, delivery, fire, fault, ...).
steps_per_seed_default: Final = 20_000
steps_per_seed_max: Final = 1_000_000
# Runs the simulated client starts in one seed (they share engines, queues and workers).
runs_per_seed_max: Final = 64
# Seeds one call may simulate.
seeds_per_call_max: Final = 10_000_000

# Processes.
engines_max: Final = 2  # one, or two racing over the same log
workers_default: Final = 2
workers_max: Final = 16
engine_restart_ms_max: Final = 2_000  # a crashed engine is back within this
worker_restart_ms_max: Final = 5_000
# An engine's resume after a start rolls its crash once; when it strikes, it does at one of
# the resume's first (this many times the runs in the log) calls into the world (about what
# a run's resume makes: a read, a snapshot read, its effects again).
resume_calls_per_run: Final = 3

# Latencies and handler durations (virtual).
delivery_ms_max: Final = 3  # publish -> available to a consumer
handler_ms_max: Final = 250  # an ordinary handler call
slow_handler_ms_max: Final = 120_000  # a slow one (longer than the task ack wait)
slow_handler_fraction: Final = 0.05
command_batch_max: Final = 16  # commands one simulated engine step takes at once

# Fault magnitudes.
late_delivery_ms_max: Final = 10_000  # a late message arrives up to this much later
clock_jump_ms_max: Final = 30_000  # a process clock jumps by up to this, either way
# Slack over a run's computed time bound (restarts, late deliveries, clock jumps).
run_bound_slack_ms: Final = 30 * 60_000

# The substrate (same values as the NATS runtime).
task_ack_wait_ms: Final = runtime.task_ack_wait_ms_default
task_deliver_max: Final = runtime.task_deliver_max_default
command_ack_wait_ms: Final = runtime.command_ack_wait_ms
command_deliver_max: Final = runtime.command_deliver_max
history_duplicate_window_ms: Final = runtime.history_duplicate_window_ms
command_duplicate_window_ms: Final = runtime.command_duplicate_window_ms
task_duplicate_window_ms: Final = runtime.task_duplicate_window_ms
# The simulated worker's real heartbeat task must never fire: heartbeats are simulated in
# virtual time by the task queue (see scheduler.py).
worker_heartbeat_interval_ms: Final = 10 * 365 * 24 * 3_600_000

# Reports.
trace_lines_max: Final = 60  # the short trace printed with a failing seed
trace_entries_max: Final = 200_000  # entries kept for `--trace` of one seed
violations_per_seed_max: Final = 20
# Task messages whose (run, step, attempt) the attempt log keeps decoded, per seed.
task_keys_remembered_max: Final = 100_000
