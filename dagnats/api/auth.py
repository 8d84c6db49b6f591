"""The HTTP API's bearer token: where it comes from, where the API may bind without one, and
the guard every request but `/health` passes.

- The token is read from `--api-token-file` (its first line) or else `$DAGNATS_API_TOKEN`;
  it must be `api_token_chars_min..api_token_chars_max` visible ASCII characters.
- Without a token the API binds only to loopback (127.0.0.0/8, ::1, localhost); any other
  address is refused at start (`TokenRequiredError`).
- With a token, every request but `GET /health` and the static docs page (files shipped in
  the wheel, no data) needs `Authorization: Bearer <token>`, compared in constant time
  (`hmac.compare_digest`); otherwise 401 with a problem body and `WWW-Authenticate: Bearer`.
- Except `/hooks/...` (webhook and http triggers): a request there without the token goes on,
  marked `scope["state"][BEARER_MISSING] = True`, and the route serves it only for a trigger
  with a `secret`, whose HMAC signature then authenticates it (so GitHub-style senders, which
  cannot send a bearer token, work); a trigger without a secret answers it 401
  (`dagnats/api/triggers_routes.py`).

Reading the token and the loopback rule live in `dagnats/api/checks.py` (no Litestar, so serve
checks them before it starts); this module holds the guard. It does no I/O.
"""

from __future__ import annotations

import hmac
from typing import Final

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from dagnats.api.checks import TOKEN_ENV
from dagnats.api.problems import ProblemError

PUBLIC_PATHS: Final = frozenset(("/health", "/"))  # "/": a redirect to the console
# the static docs page (files from the wheel, no data); the console (its own guard: a session
# cookie or this bearer token, dagnats/console/security.py)
PUBLIC_PREFIXES: Final = ("/docs", "/console")
SIGNED_PREFIX: Final = "/hooks/"  # authenticated by a trigger's signature instead (above)
BEARER_MISSING: Final = "dagnats.bearer_missing"  # scope state: passed on without the token


def bearer_matches(header: str, token: str) -> bool:
    """Whether an Authorization header value carries `token` (constant-time compare)."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or any(
        path == prefix or path.startswith(prefix + "/") for prefix in PUBLIC_PREFIXES
    )


class BearerGuard(ASGIMiddleware):
    """Every HTTP request but the public ones needs the bearer token (401 otherwise)."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if scope["type"] != ScopeType.HTTP or is_public(scope["path"]):
            await next_app(scope, receive, send)
            return
        header = ""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        if bearer_matches(header, self.token):
            await next_app(scope, receive, send)
            return
        if scope["path"].startswith(SIGNED_PREFIX):  # the trigger's signature decides
            scope.setdefault("state", {})[BEARER_MISSING] = True
            await next_app(scope, receive, send)
            return
        detail = (
            "this request needs `Authorization: Bearer <token>`"
            if not header
            else "the bearer token is wrong (or the scheme is not Bearer)"
        )
        raise ProblemError(
            401, detail, kind="unauthorized",
            hint=f"send the token of --api-token-file / ${TOKEN_ENV}",
            headers={"WWW-Authenticate": 'Bearer realm="dagnats"'},
        )  # fmt: skip
