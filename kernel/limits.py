"""Every bound of the system, named once.

Each maximum is a `Final` with its unit last. Checks happen at the edge (parsing a workflow,
accepting a command, encoding a payload) with an error that names the field, the value and
the limit. Nothing here may import anything of the project.
"""

from typing import Final

# Workflow definitions.
steps_per_workflow_max: Final = 1_000
dependencies_per_step_max: Final = 100
step_id_length_max: Final = 128
workflow_name_length_max: Final = 128
task_name_length_max: Final = 128
worker_group_length_max: Final = 64  # a step's worker group (README "Worker groups")
worker_groups_max: Final = 32  # groups one worker serves
workflow_bytes_max: Final = 1_048_576
validation_problems_max: Final = 50
metadata_bytes_max: Final = 16_384

# Retries and time.
attempts_max: Final = 100  # a retry policy's max_attempts (failures a handler reported)
lost_attempts_max: Final = 10  # attempts of one step (or item) whose worker vanished, beside those
attempts_per_reopen_max: Final = attempts_max + lost_attempts_max  # attempts between reopens
reopens_max: Final = 20  # times one run may be reopened (`dagnats run retry`; kernel.reopen)
# The highest attempt number: a reopened step's attempts go on from where they were, so the
# task message ids `<run>:<step>:<attempt>` stay unique across reopens.
attempt_number_max: Final = attempts_per_reopen_max * (reopens_max + 1)
delay_ms_max: Final = 7 * 24 * 3_600_000  # one week: the longest retry backoff
timeout_ms_max: Final = 365 * 24 * 3_600_000  # one year: the longest step or run timeout
retry_multiplier_max: Final = 100.0

# Payloads.
payload_bytes_max: Final = 1_048_576  # one step input or output, one run input
error_message_bytes_max: Final = 8_192

# Runs.
timers_per_run_max: Final = 10_000
events_per_decision_max: Final = 10_000
# Commands of one run decided together into one history message (kernel/batch.py); a batch
# also stays within events_per_decision_max and the history message's byte bound.
commands_per_decision_max: Final = 64
advance_iterations_max: Final = 10_000  # fixpoint passes of one decision over a run's DAG
run_id_length_max: Final = 128

# Signals and step timers.
signal_name_length_max: Final = 128
signal_id_length_max: Final = 128  # a signal's identity, stamped by its sender
signal_bytes_max: Final = 65_536  # one signal's payload
signals_per_run_max: Final = 1_000
sleep_ms_max: Final = 365 * 24 * 3_600_000  # one year: the longest durable sleep

# Sub-workflows and external events.
sub_workflow_depth_max: Final = 8  # a root run is depth 0; its children 1, and so on
event_name_length_max: Final = 128
event_bytes_max: Final = 65_536  # one external event's payload, checked at publish
cancel_on_max: Final = 16  # conditions of one workflow's cancel_on

# Dynamic steps: planners and maps.
dynamic_steps_per_run_max: Final = 1_000  # steps all the plans of one run may append
plan_steps_max: Final = 200  # steps of one plan (a planner's max_steps is at most this)
plan_depth_max: Final = 5  # nesting of plans: a plan's steps are depth 1, a nested plan's 2, ...
map_items_max: Final = 100_000  # items of one map (a map's max_items is at most this)
map_concurrency_max: Final = 10_000  # items of one map in flight at once

# Agent loops.
agent_turns_max: Final = 10_000  # turns of one agent loop (its max_turns is at most this)
agent_tool_calls_per_turn_max: Final = 64  # tool calls one turn may ask for
agent_tool_calls_max: Final = 100_000  # tool calls of one agent loop over all its turns
agent_tool_name_length_max: Final = 128
agent_tokens_max: Final = 10**12  # a max_tokens budget, and the tokens one turn may report
agent_cost_max: Final = 1e9  # a max_cost budget, and the cost one turn may report

# The control plane: agents that start child runs (kernel/control.py). A workflow may start
# children only when its file says so (`child_runs`); its quotas there are at most these.
control_generations_max: Final = sub_workflow_depth_max  # depth of a started child (root: 0)
control_generations_default: Final = 2
control_active_children_max: Final = 64  # children of one run running at once
control_active_children_default: Final = 4
control_definitions_max: Final = 256  # workflow definitions one run's agents may write
control_definitions_default: Final = 16
control_starts_per_minute_max: Final = 600  # child starts of one run within any minute
control_starts_per_minute_default: Final = 10
control_window_ms: Final = 60_000  # the window of the starts-per-minute quota
# refusals a root run keeps to answer a descendant's repeated ask alike (the latest only)
control_tree_refusals_kept: Final = 64

# Log steps.
log_message_bytes_max: Final = 8_192  # a log step's message

# Approvals and continue-as-new.
approval_text_bytes_max: Final = 8_192  # an approval's question or description, or a comment
approval_by_length_max: Final = 128  # who decided
approvals_per_run_max: Final = 1_000  # approvals one run may request
continue_as_new_chain_max: Final = 10_000  # runs of one continue-as-new chain (the root is 0)
history_events_soft_max: Final = 10_000  # past this, workers are told to continue as new

# JSON at the edge.
step_positions_cached_max: Final = 4_096  # runs' step-position maps kept (kernel.state)
dag_indexes_cached_max: Final = 4_096  # runs' DAG indexes kept (kernel.dag_index)
dags_cached_max: Final = 256  # DAG indexes shared by runs of one DAG (kernel.dag_index)
life_tags_cached_max: Final = 4_096  # runs' life tags kept (kernel.effects)
query_states_cached_max: Final = 4_096  # decoded run states the query tables keep
json_depth_max: Final = 64  # nesting of any JSON accepted at the edge (inputs, outputs, files)

# -- admission and flow control (kernel/admission.py, kernel/workflow/admission.py) ----------
max_runs_max: Final = 100_000  # concurrency.max_runs of one workflow
admission_waiting_max: Final = 100_000  # pending runs one admission gate holds
admission_skips_kept: Final = 1_024  # skipped runs a gate remembers (a redelivered start)
admission_key_path_length_max: Final = 256  # a key or priority path into the input
admission_key_length_max: Final = 256  # the key value a path finds (its JSON text)
priority_abs_max: Final = 1_000_000  # |priority|
input_schema_bytes_max: Final = 262_144  # a workflow's input_schema, as JSON
rate_limits_max: Final = 16  # rate_limits entries of one workflow
rate_limit_max: Final = 1_000_000  # a rate limit's units per period
rate_limit_period_ms_max: Final = 86_400_000  # a rate limit's period (one day)
task_concurrency_max: Final = 100_000  # max_task_concurrency of one task type
flow_taken_kept: Final = 4_096  # task attempts a rate limiter remembers (a redelivered task)
flow_waiting_max: Final = 100_000  # tasks one task concurrency limiter holds waiting
flow_askers_kept: Final = 256  # workflows whose limit one task concurrency limiter remembers

# Triggers (kernel/workflow/triggers.py) and the respond step (steps/respond.py).
triggers_per_workflow_max: Final = 32
trigger_id_length_max: Final = 64
cron_backfill_max: Final = 100  # missed cron fires one trigger runs after downtime
trigger_path_length_max: Final = 256
trigger_subject_length_max: Final = 256
trigger_secret_length_min: Final = 16
trigger_secret_length_max: Final = 256
http_trigger_timeout_ms_max: Final = 10 * 60_000  # an HTTP request waits this long at most
http_trigger_timeout_ms_default: Final = 30_000
trigger_body_bytes_default: Final = 65_536
trigger_body_bytes_max: Final = payload_bytes_max // 2  # the request wrapped stays a payload
debounce_ms_max: Final = 24 * 3_600_000
respond_headers_max: Final = 32
respond_header_bytes_max: Final = 4_096
respond_status_min: Final = 100
respond_status_max: Final = 599
