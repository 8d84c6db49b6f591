"""api/: the HTTP API of `dagnats serve` (Litestar under uvicorn, OpenAPI from msgspec Structs).

`app.create_app(services, extra_route_handlers=...)` builds the app; `problems` (RFC 9457
problem details), `auth` (the bearer token and the loopback rule), `limits` (its bounds),
`services` (the serve's clients and health), the `routes_*` modules (REST resources under
`/v1/` mirroring the Client and the CLI one-to-one), `docs` (OpenAPI and the offline docs
page) and `server` (uvicorn inside the serve's loop). The HTTP worker bridge lives in
`bridge*.py` and plugs into `create_app`. Imports `dagnats.client`, `dagnats.runtime`,
`kernel`, `steps`, `projections`; never `dagnats.cli` (the CLI imports this package).
"""
