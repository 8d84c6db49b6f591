"""What every console page shares: the Jinja2 environment (autoescape on: every value a
template shows is HTML-escaped), rendering a page with its CSRF cookie, reading a posted form
with its CSRF and origin checks, the access hook in front of every console route, and the
record of who did what.

I/O: reads templates from the package; logs each mutation (`dagnats.console`).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any, Final
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined
from litestar import Request, Response
from litestar.datastructures import Cookie
from litestar.response import Redirect

from dagnats.console import security
from dagnats.console.security import CSRF_COOKIE, CSRF_FIELD, SESSION_COOKIE, Keys

log = logging.getLogger("dagnats.console")

PREFIX: Final = "/console"
PUBLIC: Final = (f"{PREFIX}/static/", f"{PREFIX}/login")
form_bytes_max: Final = 256 * 1024
HTML: Final = "text/html"


def time_text(ms: int | None) -> str:
    if not ms:
        return "—"
    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def age_text(ms: int | None, now_ms: int) -> str:
    if not ms:
        return "—"
    seconds = max(0, (now_ms - ms) // 1000)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7_200:
        return f"{seconds // 60} min"
    return f"{seconds // 3_600} h {seconds % 3_600 // 60} min"


def make_environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("dagnats.console", "templates"),
        autoescape=True,  # every template, whatever its name: user data is always escaped
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["time"] = time_text
    environment.filters["urlpart"] = lambda text: quote(str(text), safe="")
    environment.globals["prefix"] = PREFIX
    return environment


ENVIRONMENT: Final = make_environment()


def actor_of(request: Request[Any, Any, Any]) -> str:
    actor = request.scope.get("state", {}).get("console_actor")
    assert isinstance(actor, str), "the access hook sets the actor"
    return actor


def page(
    request: Request[Any, Any, Any], keys: Keys, template: str, *, status: int = 200,
    **context: Any,
) -> Response[str]:  # fmt: skip
    """The page `template` with the common context; sets the CSRF cookie on first visit."""
    cookie = request.cookies.get(CSRF_COOKIE)
    cookies: list[Cookie] = []
    if not cookie:
        cookie = security.new_csrf_cookie()
        cookies.append(Cookie(
            key=CSRF_COOKIE, value=cookie, path=PREFIX, httponly=True, secure=True,
            samesite="strict",
        ))  # fmt: skip
    state = request.scope.get("state", {})
    html = ENVIRONMENT.get_template(template).render(
        csrf=security.csrf_token(keys, cookie), actor=state.get("console_actor", ""),
        token_mode=keys.token is not None, notice=request.query_params.get("notice", ""),
        error=request.query_params.get("error", ""), now_ms=int(time.time() * 1000),
        **context,
    )  # fmt: skip
    return Response(html, status_code=status, media_type=HTML, cookies=cookies)


def fragment(template: str, **context: Any) -> Response[str]:
    """A part of a page (htmx swaps it in), no cookies."""
    html = ENVIRONMENT.get_template(template).render(now_ms=int(time.time() * 1000), **context)
    return Response(html, media_type=HTML, headers={"Cache-Control": "no-store"})


class FormRefusedError(Exception):
    """A POST without a valid CSRF token or from another origin (403)."""


async def posted_form(request: Request[Any, Any, Any], keys: Keys) -> dict[str, str]:
    """The posted form's fields, after the origin and CSRF checks.

    Raises:
        FormRefusedError: another origin, or the CSRF field does not match the cookie.
    """
    if not security.same_origin(request.headers.get("origin"), request.headers.get("host")):
        raise FormRefusedError("the form was posted from another origin")
    form = await request.form()
    fields = {key: str(value) for key, value in form.items() if isinstance(value, str)}
    if not security.csrf_ok(keys, request.cookies.get(CSRF_COOKIE), fields.get(CSRF_FIELD)):
        raise FormRefusedError("the form's CSRF token is missing or stale: reload the page")
    return fields


def refused(message: str) -> Response[str]:
    html = ENVIRONMENT.get_template("refused.html").render(message=message)
    return Response(html, status_code=403, media_type=HTML)


def back(path: str, *, notice: str = "", error: str = "") -> Redirect:
    """303 to a console page with a one-line notice or error."""
    query = {k: v for k, v in (("notice", notice), ("error", error)) if v}
    target = f"{PREFIX}{path}" + (f"?{urlencode(query)}" if query else "")
    return Redirect(target, status_code=303)


def record(actor: str, action: str, target: str, detail: str = "") -> None:
    """Every console mutation leaves a line naming who did what to which run or workflow."""
    log.info("console: %s %s %s%s", actor, action, target, f" ({detail})" if detail else "")


def access_hook(keys: Keys) -> Any:
    """The hook in front of every console route: loopback `Host` without a token, else a
    session (or the bearer header); the login page and static files are open."""

    async def hook(request: Request[Any, Any, Any]) -> Response[str] | Redirect | None:
        if keys.token is None and not security.host_is_loopback(request.headers.get("host")):
            return refused("without an API token the console answers loopback hosts only")
        path = request.url.path
        if any(path.startswith(p) for p in PUBLIC):
            return None
        actor = security.authenticated_actor(
            keys, session=request.cookies.get(SESSION_COOKIE),
            authorization=request.headers.get("authorization", ""), now_s=int(time.time()),
        )  # fmt: skip
        if actor is None:
            return Redirect(f"{PREFIX}/login?{urlencode({'next': path})}", status_code=303)
        request.scope.setdefault("state", {})["console_actor"] = actor
        return None

    return hook
