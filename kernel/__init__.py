"""kernel/: the formats of a DAG run and the run's own rules. Pure.

What lives here: the storage and wire formats (events, commands, effects, state, the state
step types keep, step inputs and outcomes, the codec with its upcasters, every bound in
`limits.py`, the step-type table in `registry.py`, the workflow format in `workflow/`) and the
rules of a run whatever its steps (`decide.py` dispatch and advance, `lifecycle.py` the
attempt lifecycle, `reducer.py` evolve, `react.py` react and resume). The behaviour of each
step type is in `steps/`, reached only through `registry.py`.

Nothing here does I/O or reads ambient state (no clock, no randomness, no environment): time,
ids and seeds arrive as command fields stamped by the shell. Imports: the standard library's
pure modules, msgspec, and `kernel` itself; `steps`, `projections` and `dagnats` import this
package, never the other way round.
"""
