"""The HTTP side of `dagnats serve` (Litestar): REST resources, the HTTP worker bridge
(`bridge`, `bridge_routes`), OpenAPI. Imports `dagnats`, `kernel` and `steps`; nothing in
`kernel/`, `steps/` or `dagnats/runtime/` imports it."""
