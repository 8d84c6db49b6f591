"""runtime/: everything the serve process does, on NATS JetStream.

`serve` (the process: `Server`, `local_stack`), `nats_server` (the embedded nats-server child),
`connection`, `resources` (stream and bucket names), `log`, `queue`, `timers`, `engine`,
`links` (child runs, external events), `external_events` (the events stream), `projector`
(the projection runner), `clock` (wall clock and seeds), `assertions` (no start under -O),
`protocols` (the seams the simulator implements too), `settings`.

May import `kernel`, `steps`, `projections`, `dagnats.loading` and `dagnats.worker` (serve
runs workers; `local_stack` also makes a `dagnats.client.Client`, inside the function).
Imported by `dagnats.client`, `dagnats.cli`, `dagnats.sim`, `dagnats.worker` (protocols,
clock) and users' tests; nothing under `kernel/`, `steps/` or `projections/` imports it.
"""
