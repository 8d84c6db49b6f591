"""Bounds and defaults of the NATS runtime, named once.

The runtime's own maxima and defaults (server start-up, stream sizes, consumer settings,
subject token lengths). Each is a `Final` with its unit last, like `kernel.limits`, which
holds the bounds of the pure core; values here derive from it where they must agree.
Nothing here may do I/O or import anything of the project but `kernel.limits`.
"""

from typing import Final

from kernel import limits

# History: one message per decision (the command and the events decided from it).
history_message_bytes_max: Final = limits.payload_bytes_max * 4
# Room for headers (Nats-Msg-Id, expected sequence, reasons) on top of a message body.
message_header_bytes_max: Final = 16_384
# The max_msg_size of every stream; a message body plus its headers.
stream_message_bytes_max: Final = history_message_bytes_max + message_header_bytes_max
# The embedded server's max_payload; must be >= stream_message_bytes_max.
server_payload_bytes_max: Final = 8 * 1_048_576

# Duplicate windows (Nats-Msg-Id dedup).
history_duplicate_window_ms: Final = 2 * 60_000
command_duplicate_window_ms: Final = 2 * 60_000
# Long enough that effects issued again by resume() after an engine restart are deduplicated.
task_duplicate_window_ms: Final = 10 * 60_000
dead_letter_age_ms_max: Final = 30 * 24 * 3_600_000

# Partitions of the command subject space (ARCHITECTURE §8).
partitions_default: Final = 16
partitions_max: Final = 4_096
# A connection that found no stored count (an unpartitioned deployment) reads again after this.
partitions_recheck_ms: Final = 5_000

# Subject tokens.
run_id_length_max: Final = limits.run_id_length_max
task_type_length_max: Final = limits.task_name_length_max
timer_id_length_max: Final = 512  # dotted: "retry.<owner>.<step>.<attempt>"
dead_kind_length_max: Final = 64
dead_reason_bytes_max: Final = 1_024

# Reading history.
runs_listed_max: Final = 100_000  # one page of the server's per-subject stream info
kv_keys_listed_max: Final = 100_000  # keys of one KV bucket listed (the same page)
read_idle_timeout_ms: Final = 5_000  # longest wait for the next message of a bounded read
read_buffer_messages_max: Final = 1_024  # messages a reader holds ahead of its consumer
read_pending_messages_max: Final = 65_536  # client-side buffer of one ordered consumer
read_pending_bytes_max: Final = 64 * 1_048_576
read_restarts_max: Final = 8  # consumers a bounded read makes again (after gaps, silences)
read_heartbeat_ms: Final = 5_000  # a bounded read's consumer's idle heartbeat
read_consumer_inactive_ms: Final = 30_000  # the server drops a dead reader's consumer after

# Queues.
# The heartbeat timeout of a task: a dead worker's task goes to another one after this.
task_ack_wait_ms_default: Final = 10_000
# A worker heartbeats each task it runs this often: three beats per timeout.
task_heartbeat_interval_ms_default: Final = task_ack_wait_ms_default // 3
task_deliver_max_default: Final = 20  # deliveries of one task message (lost workers)
# An engine that stops consuming (hung, SIGSTOPped, cut off) holds the commands it fetched
# at most this long before another engine gets them; a live engine sends a progress ack
# (`+WPI`) every command_progress_interval_ms for each command it holds, so a long one stays.
command_ack_wait_ms: Final = 3_000
command_progress_interval_ms: Final = 1_000
command_deliver_max: Final = 100
# An engine whose window stays full gives back what its pull brought (runtime/command_pump),
# each give-back a delivery more: not while it holds a command delivered this often, so
# give-backs never bring one to command_deliver_max (past which the server stops).
command_give_back_deliveries_max: Final = command_deliver_max // 2
fetch_batch_max: Final = 1_000
fetch_timeout_ms_max: Final = 60_000
partition_buffer_full_wait_ms: Final = 50  # a partition pump whose buffer is full looks again after
fetch_closed_check_ms: Final = 250  # a waiting pull sees a closed connection within this
# A no-wait pull's answer (what waits, then a status) comes at once; this only bounds a stall.
fetch_no_wait_answer_ms_max: Final = 1_000
# A long poll's request expires this share of its wait (at least fetch_expiry_margin_ms_min)
# before the client stops waiting: the server counts the expiry from when it got the request,
# so a request sent late must still end before its reader leaves (else a message delivered to
# it waits in an inbox nobody reads). The client returns on its own request's expiry.
fetch_expiry_margin_share: Final = 0.1
fetch_expiry_margin_ms_min: Final = 20
nak_delay_ms_max: Final = limits.delay_ms_max
ack_pending_max: Final = 10_000
task_types_per_queue_max: Final = 1_000  # task types one worker process consumes

# A worker's results (dagnats/worker.py): kept and published again, under the same
# Nats-Msg-Id, until the server acknowledges one; then given up with an error line (the task
# comes back and is reported lost). Longer than the commands' duplicate window is harmless:
# a result decided twice yields no events the second time.
result_send_ms_max: Final = 10 * 60_000
result_retry_delay_ms_min: Final = 100
result_retry_delay_ms_max: Final = 2_000
# The HTTP worker bridge's drain on stop: unacknowledged results get this long. (A `dagnats
# worker`'s whole drain has its own bound, `drain_timeout_ms`: dagnats/worker_drain.py.)
drain_results_ms_max: Final = 15_000
# A client's command (a start, a signal, a cancel) that no stream acknowledged (a stream
# electing its leader in a cluster, a server restarting): published again, under the same
# Nats-Msg-Id (so stored once), until this long has passed; then the last error is raised.
command_send_ms_max: Final = 15_000
command_retry_delay_ms_min: Final = 100
command_retry_delay_ms_max: Final = 1_000
# Every copy of a command sent again falls within its stream's duplicate window: one stored.
assert command_send_ms_max < command_duplicate_window_ms, (
    command_send_ms_max,
    command_duplicate_window_ms,
)

# The HTTP worker bridge (dagnats/api/bridge.py): tasks held for HTTP workers under task ids.
bridge_leases_max: Final = ack_pending_max  # tasks one bridge holds at once (a poll past: 429)
bridge_poll_tasks_max: Final = 100  # tasks one poll may take
bridge_poll_task_types_max: Final = 100  # task types one poll may name
bridge_poll_timeout_ms_max: Final = 60_000  # the longest long poll
bridge_poll_slice_ms: Final = 1_000  # one long pull of a lone task type (then pulled again)
bridge_poll_slice_many_ms: Final = 250  # one long pull per type when a poll names several
bridge_poll_rounds_max: Final = 10_000  # pull rounds of one poll (each waits or takes)
bridge_settled_remembered_max: Final = 10_000  # settled task ids kept to answer a replay 409
bridge_result_wait_ms: Final = 5_000  # an HTTP complete/fail waits this for the ack, then 202
bridge_worker_id_length_max: Final = 128
# A task request body: an output up to payload_bytes_max, with room for the rest of it.
bridge_body_bytes_max: Final = limits.payload_bytes_max + 4 * limits.error_message_bytes_max

# Connections (dagnats/runtime/connection.py).
# A publish is written to the socket at once (runtime/js_publish) while the socket's write
# buffer holds at most this; beyond it, nats-py's flusher writes it (and drains the socket).
direct_write_buffered_max: Final = 65_536
connection_close_timeout_ms: Final = 5_000  # closing a connection (unsubscribe, flush) at the end
outage_log_interval_ms: Final = 10_000  # while NATS is unreachable: one summary line per

# The engine (dagnats/runtime/engine.py).
append_attempts_max: Final = 10  # OCC conflicts in a row before a command is retried later
effects_in_flight_max: Final = 256
resume_concurrency_max: Final = 16
run_cache_max: Final = 10_000
# The cyclic garbage collector of a serve or worker process (dagnats/runtime/collector.py):
# allocations net of frees before a pass of its youngest generation (Python's default 700),
# and passes of a generation before one of the next (default 10 and 10). An engine holding
# 2,000 runs spent a fifth of its CPU in the collector's passes at the defaults.
gc_young_threshold: Final = 50_000
gc_middle_threshold: Final = 20
gc_old_threshold: Final = 20
# Workflows a StartRun carried that the engine found valid, remembered by their bytes' digest
# (runtime/engine.py): a run of one of them is not validated again (~70 us for 10 steps).
valid_workflows_remembered_max: Final = 256
# Admission (dagnats/runtime/admission_compact.py): an admission gate's or task limiter's
# messages since its last snapshot before the engine snapshots it and purges below.
admission_compact_after: Final = 1_000

# Leases (dagnats/runtime/lease.py): one engine runs each shared projection; a standby takes
# over within about lease_ttl_ms (+ one refresh interval) of the owner's last refresh.
lease_ttl_ms: Final = 5_000
lease_refresh_interval_ms: Final = 1_000

# The worker directory (dagnats/runtime/workers_directory.py): each worker rewrites its entry
# every worker_beat_interval_ms; a reader counts it live for worker_beat_misses_max of its
# intervals; the bucket drops an entry not rewritten within worker_directory_ttl_ms.
worker_group_length_max: Final = limits.worker_group_length_max
worker_groups_max: Final = limits.worker_groups_max
worker_beat_interval_ms_default: Final = 5_000
worker_beat_interval_ms_min: Final = 50
worker_beat_misses_max: Final = 3
worker_directory_ttl_ms: Final = 60_000
workers_listed_max: Final = 10_000
# Ended-run markers (dagnats/runtime/ended_runs.py): how long a worker can learn that a run
# ended before taking one of its tasks (a task waits at most this long to be skipped).
ended_marker_ttl_ms: Final = 7 * 24 * 3_600_000
# A task delivered for the first time that was stored less than this long before the worker
# took it runs without reading its run's marker (a round trip on every task's path): its run
# can end while it waits that little as likely as while its handler runs, which no check
# catches either (the engine sets the stale result aside). Older and redelivered tasks (those
# that waited: the queue was behind, a worker was down, the run was cancelled meanwhile) read
# it. Measured on the server's clock against the worker's, either way (ended_runs.check_due).
ended_check_min_age_ms: Final = 100
# Retention (dagnats/runtime/retention.py): serve purges finished runs older than its
# --retention age, at most retention_purges_per_sweep_max per sweep, sweeping every quarter of
# the age within [retention_sweep_min_ms, retention_sweep_max_ms]; it reads the retention log
# every retention_log_poll_ms to drop purged runs' query rows. The log keeps the newest
# retention_log_max records; `run list --purged` shows at most retention_listed_max.
retention_purges_per_sweep_max: Final = 500
retention_sweep_min_ms: Final = 500
retention_sweep_max_ms: Final = 60_000
retention_log_poll_ms: Final = 1_000
retention_log_max: Final = 1_000_000
retention_listed_max: Final = 10_000
retention_min_ms: Final = 1_000  # a shorter --retention is refused
# Bulk start (`dagnats run start NAME --inputs-file F`): at most this many lines (runs) per
# file, started with at most bulk_starts_in_flight_max starts in flight.
bulk_start_lines_max: Final = 10_000
bulk_starts_in_flight_max: Final = 16
# Partitions of the commands (dagnats/runtime/partitions.py): each is owned by one engine under
# a lease in the owners bucket, whose TTL ends a dead owner's hold; a live owner refreshes
# every partition_lease_refresh_ms and stops appending partition_lease_margin_ms before its
# belief in holding ends, so old and new owners never append at the same time.
partition_lease_ttl_ms: Final = 3_000
partition_lease_refresh_ms: Final = 500
partition_lease_margin_ms: Final = 1_000
partition_release_wait_ms: Final = 5_000  # a released partition's commands in hand settle
engines_live_max: Final = 256  # engines one cluster counts for its fair shares
cluster_form_timeout_ms: Final = 60_000  # a clustered start waits this for JetStream's quorum

# Timers.
timer_horizon_ms_max: Final = limits.timeout_ms_max

# The embedded server.
server_start_timeout_ms: Final = 15_000
server_stop_timeout_ms: Final = 10_000
port_pick_attempts_max: Final = 5
server_log_tail_lines_max: Final = 20
# The Go runtime's GOMAXPROCS the embedded server gets when the environment sets none: the
# machine's CPUs over this divisor, at least 1 (it shares the machine with the engine and the
# workers; its Go scheduler spinning idle Ps costs CPU they could use). The environment
# variable below overrides it (0: Go's own default, every CPU); a GOMAXPROCS already in the
# environment is passed on as it is.
server_gomaxprocs_cpu_divisor: Final = 2
server_gomaxprocs_env: Final = "DAGNATS_NATS_GOMAXPROCS"
server_gomaxprocs_max: Final = 1_024

# The engine's command pump.
command_batch_max: Final = 256  # commands fetched at once
command_fetch_timeout_ms: Final = 1_000
# What a fetch waits, after its first command, for more the server says are on their way.
standing_pull_more_wait_ms: Final = 20
# Commands fetched and not yet settled (acked or naked) the engine holds at most; it fetches
# again as soon as there is room for command_fetch_room_min more (runtime/command_pump).
commands_unsettled_max: Final = command_batch_max * 2
command_fetch_room_min: Final = command_batch_max // 2
unknown_run_deliveries_max: Final = 5  # a command for an unknown run is retried, then dead
retry_delay_ms: Final = 1_000  # a command to retry (OCC conflicts, unknown run) comes back then
parked_retry_delay_ms: Final = 60_000  # a parked run's commands come back then

# External events (DAGNATS_EVENTS).
events_age_ms_max: Final = 7 * 24 * 3_600_000  # events are kept a week for late waiters
event_waiting_runs_max: Final = 100_000  # runs the engine's in-memory event index holds

# Run lifecycle operations (dagnats/runtime/parent_watch.py).
parent_watch_interval_ms: Final = 500  # how often `serve --die-with-parent` checks its parent

# Triggers (dagnats/runtime/triggers*.py, dagnats/api/triggers_routes.py).
trigger_tick_ms: Final = 1_000  # how often cron triggers and debounced fires are looked at
trigger_reload_ms: Final = 5_000  # how often the set of triggers is read again
cron_late_ms: Final = 60_000  # a fire seen later than this after its time was missed
cron_fires_scan_max: Final = 100_000  # fire times looked at per trigger and tick
trigger_fires_kept_per_trigger: Final = 1_000  # fire records kept per trigger
trigger_fire_age_ms_max: Final = 30 * 24 * 3_600_000  # fire records are kept a month
subject_fetch_batch: Final = 64
debounce_keys_max: Final = 10_000  # bursts held, pending or remembered (more start at once)
debounce_update_attempts_max: Final = 16  # compare-and-set tries of one fire on its burst
debounce_fires_remembered_max: Final = 256  # fire ids a burst remembers (redelivery)
# A started burst is kept this long (longer than a subject trigger consumer's 30 s ack wait),
# so a message whose ack a crash lost (nats-server flushes acks lazily) is no new burst.
debounce_done_kept_ms: Final = 10 * 60_000
# Manual fires (`dagnats trigger fire`, POST .../fire) are requests the engine answers.
trigger_request_age_ms_max: Final = 600_000  # a request no engine read in 10 min expires unfired
trigger_request_ack_wait_s: Final = 30.0  # a request taken by an engine that died: sent again
trigger_fire_reply_timeout_s: Final = 20.0  # how long a caller waits for the engine's answer
trigger_request_publish_timeout_s: Final = 5.0  # one publish of a request waits for its ack
trigger_request_publish_retry_s: Final = 0.25  # a request no stream took: published again
idempotency_ttl_ms: Final = 24 * 3_600_000  # an http trigger's idempotency key is kept a day
http_responses_waiting_max: Final = 10_000  # http requests waiting for their run at once

# Observability (dagnats/observe/).
attempts_traced_max: Final = 100_000  # step attempts whose scheduling time tracing remembers
workers_seen_window_ms: Final = 60_000  # a worker that reported within this counts as live
workers_seen_max: Final = 10_000  # worker ids the engine remembers for that count
metric_children_cached_max: Final = 10_000  # labelled metric children the hooks keep at hand
status_interval_ms: Final = 2_000  # how often serve refreshes its gauges and status record
status_stale_ms: Final = 10_000  # an engine status record older than this: the engine is down

# LLM agents (dagnats/llm/): model calls, tools, live text, the carried conversation.
llm_timeout_s_default: Final = 120.0  # one model call (an adapter's timeout_s)
llm_max_tokens_default: Final = 4_096  # of one model answer (agent_turn's max_tokens)
llm_output_retries_default: Final = 2
llm_output_retries_max: Final = 10  # answers that do not decode, fed back within one loop
llm_tool_result_chars_max: Final = 32_768  # of one tool result as the model sees it
llm_tool_description_chars_max: Final = 1_024
llm_tools_per_set_max: Final = limits.agent_tool_calls_per_turn_max  # tools of one Toolset
llm_provider_message_chars_max: Final = 500  # of a provider's error message kept in ours
llm_retry_after_s_max: Final = 3_600.0  # a server's retry-after beyond this is taken as this
llm_live_text_bytes_max: Final = 16_384  # of one live message's text (a longer piece is split)
llm_live_text_shown_chars_max: Final = 2_000  # of the current turn's text `run wait` shows
# The conversation an agent_turn carries to its next turn (its state, as JSON): past this the
# turn fails with an error saying so; half a payload leaves room for the step input and the
# tool results in the turn's envelope (kernel limits.payload_bytes_max).
llm_conversation_bytes_max: Final = limits.payload_bytes_max // 2

# serve's start (dagnats/cli/serve.py): the HTTP API starts once the engine's first resume
# pass is done, or after this long at most (10k unfinished runs resume in about 2 s on a
# loaded machine: bench.restart).
api_after_resume_wait_max_s: Final = 10.0
# The query tables' SQLite file in the data dir (runtime.projector_sqlite; named here, a
# module without heavy imports, so that serve names it before importing sqlite-utils).
sqlite_file: Final = "dagnats.sqlite"
# Subjects built from run ids and task lanes already checked (runtime.resources), per kind.
subjects_cached_max: Final = 4_096
