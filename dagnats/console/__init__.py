"""The web console of `dagnats serve` (README "Console"): server-rendered pages under
`/console` (and `/`, which leads there) on the HTTP API's server.

Jinja2 templates with autoescape, htmx and its SSE extension vendored as package data (no CDN,
no build step), live run pages over Server-Sent Events. Access and CSRF rules are in
`dagnats.console.security`; pages in `pages`, forms in `actions`, the triggers, dead letters
and workers pages (with their forms) in `ops`. Mount it with `console_handlers(token)` among
the API's extra route handlers.
"""

from __future__ import annotations

from typing import Final

from litestar import Router, get
from litestar.di import Provide
from litestar.handlers import HTTPRouteHandler
from litestar.response import Redirect

from dagnats.console import actions, ops, pages
from dagnats.console.common import PREFIX, access_hook
from dagnats.console.security import Keys

ROOT_PATHS: Final = ("/", PREFIX)  # reached without the API's bearer header (see api/auth.py)


@get("/", include_in_schema=False, sync_to_thread=False)
def root() -> Redirect:
    """The HTTP server's default page is the console."""
    return Redirect(f"{PREFIX}/", status_code=307)


def console_handlers(token: str | None) -> list[Router | HTTPRouteHandler]:
    """The console's router (with its access hook and keys) and the `/` redirect."""
    keys = Keys.make(token)

    def provide_keys() -> Keys:
        return keys

    router = Router(
        path=PREFIX,
        route_handlers=[*pages.HANDLERS, *actions.HANDLERS, *ops.HANDLERS],
        dependencies={"keys": Provide(provide_keys, sync_to_thread=False)},
        before_request=access_hook(keys),
        include_in_schema=False,
    )
    return [router, root]
