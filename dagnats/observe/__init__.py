"""Observability: OpenTelemetry traces (`tracing`), Prometheus metrics (`metrics`), the engine's
status record and the facts `dagnats status` shows (`status`), and the engine's hook object
that feeds the first two (`hooks`).

Nothing here changes what the engine decides: hooks only read the decisions the engine made
(after they are appended) and never raise into it. The modules of this package import the
kernel's formats and `dagnats.runtime` helpers, never `dagnats.runtime.engine` or the worker
(they call in here, not the other way round).
"""
