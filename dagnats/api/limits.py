"""Bounds and defaults of the HTTP API, named once (each a `Final`, unit last).

Derived from `kernel.limits` where they must agree (a request body holds at most one workflow
definition or one payload, plus the JSON around it). Nothing here does I/O.
"""

from typing import Final

from kernel import limits

# A request body: the largest of a workflow definition and a payload, and room around it.
request_body_bytes_max: Final = max(limits.workflow_bytes_max, limits.payload_bytes_max) + 65_536
http_default_address: Final = "127.0.0.1:8080"
# `GET /v1/runs/{id}/wait`: the long poll's default and bound.
wait_timeout_s_default: Final = 30.0
wait_timeout_s_max: Final = 60.0
# `GET /v1/runs/{id}/events` (SSE): one stream lasts at most this long; the client reconnects
# with Last-Event-ID (the history sequence) and loses nothing.
sse_stream_s_max: Final = 300.0
# `GET /v1/runs/{id}/history`: a page.
history_page_default: Final = 100
history_page_max: Final = 1_000
# `GET /v1/runs`: the `run list` bound.
runs_listed_max: Final = 10_000
runs_listed_default: Final = 50
# `POST /v1/query`: rows returned and the SQL text.
query_rows_max: Final = 10_000
query_rows_default: Final = 1_000
query_sql_chars_max: Final = 16_384
query_time_s_max: Final = 10.0  # a query running longer is interrupted
# `Idempotency-Key`: its length, and how long a key holds its first run.
idempotency_key_chars_max: Final = 255
idempotency_ttl_s: Final = 24 * 3_600
# Approver connections the API keeps (one per approver identity that decided over HTTP).
approver_clients_max: Final = 16
# The bearer token: read from a file or the environment; shorter is refused.
api_token_chars_min: Final = 16
api_token_chars_max: Final = 4_096
# Serving: how long the HTTP server is given to stop (open streams are cut after it).
http_stop_timeout_s: Final = 5.0
# The bridge's heartbeat timeout ($DAGNATS_BRIDGE_HEARTBEAT_TIMEOUT), as `dagnats worker`'s.
bridge_heartbeat_timeout_s_min: Final = 0.5
bridge_heartbeat_timeout_s_max: Final = 3_600.0
