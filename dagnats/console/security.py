"""Who may use the console and how its forms are protected: the session cookie, CSRF, actors.

- Without an API token the console answers on loopback only (serve refuses to bind wider), to
  requests whose `Host` is a loopback name or address (no DNS rebinding), without a login.
- With a token, a page needs the session cookie (set by the login form after it checked the
  token, signed with a key derived from the token: HMAC-SHA256; `Secure`, `HttpOnly`,
  `SameSite=Strict`, valid `session_s_max`) or the API's own `Authorization: Bearer` header.
- Every form carries a CSRF token that must match the `dagnats_csrf` cookie (a double-submit
  token, HMAC-bound to the process's key) and a POST from another origin (`Origin` header)
  is refused.
- The actor of a mutation: the name given at login, else "local user (loopback)".

Pure functions of their arguments plus the `Keys` made at start; no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from litestar.di import NamedDependency

from dagnats.api.auth import bearer_matches
from dagnats.api.checks import is_loopback

SESSION_COOKIE: Final = "dagnats_session"
CSRF_COOKIE: Final = "dagnats_csrf"
CSRF_FIELD: Final = "csrf"
session_s_max: Final = 12 * 3_600  # a login lasts this long
actor_chars_max: Final = 64
LOCAL_ACTOR: Final = "local user (loopback)"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass(frozen=True)
class Keys:
    """The console's secrets: the API token (or None) and the process's signing key."""

    token: str | None
    signing_key: bytes

    @classmethod
    def make(cls, token: str | None) -> Keys:
        """Keys for a serve: sessions signed with a key derived from the token (a login
        survives a restart with the same token), CSRF with a fresh random key otherwise."""
        if token is not None:
            key = hashlib.sha256(b"dagnats-console-session\0" + token.encode()).digest()
        else:
            key = secrets.token_bytes(32)
        return cls(token=token, signing_key=key)

    def sign(self, text: str) -> str:
        return _b64(hmac.new(self.signing_key, text.encode(), hashlib.sha256).digest())


def make_session(keys: Keys, actor: str, now_s: int) -> str:
    """A session cookie value: `<expires>.<actor, base64>.<signature>`."""
    assert keys.token is not None, "sessions exist only with a token"
    assert 1 <= len(actor) <= actor_chars_max, actor
    body = f"{now_s + session_s_max}.{_b64(actor.encode())}"
    return f"{body}.{keys.sign('session:' + body)}"


def read_session(keys: Keys, value: str, now_s: int) -> str | None:
    """The actor of a valid, unexpired session cookie, else None."""
    body, _, signature = value.rpartition(".")
    expires, _, actor = body.partition(".")
    if not body or not expires.isdigit() or int(expires) < now_s:
        return None
    if not hmac.compare_digest(signature, keys.sign("session:" + body)):
        return None
    try:
        return base64.urlsafe_b64decode(actor + "=" * (-len(actor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def token_matches(keys: Keys, given: str) -> bool:
    """Whether the login form's token is the API token (constant time)."""
    if keys.token is None:
        return False
    return hmac.compare_digest(given.strip().encode(), keys.token.encode())


def new_csrf_cookie() -> str:
    return _b64(secrets.token_bytes(24))


def csrf_token(keys: Keys, cookie: str) -> str:
    """The token the forms of a browser carry: bound to its CSRF cookie."""
    return keys.sign("csrf:" + cookie)


def csrf_ok(keys: Keys, cookie: str | None, field: str | None) -> bool:
    if not cookie or not field:
        return False
    return hmac.compare_digest(field, csrf_token(keys, cookie))


def same_origin(origin: str | None, host: str | None) -> bool:
    """A POST's `Origin` (when the browser sent one) names the host it was sent to."""
    if origin is None:
        return True  # old browsers and non-browser clients; the CSRF token still applies
    if not host:
        return False
    return urlsplit(origin).netloc.lower() == host.lower()


def host_is_loopback(host_header: str | None) -> bool:
    """Whether a `Host` header names this machine (a loopback name or address)."""
    if not host_header:
        return False
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return is_loopback(host)


def clean_actor(name: str) -> str:
    """A login name as the actor: printable, trimmed, at most `actor_chars_max` characters."""
    text = "".join(ch for ch in name.strip() if ch.isprintable())
    return text[:actor_chars_max]


def authenticated_actor(
    keys: Keys, *, session: str | None, authorization: str, now_s: int
) -> str | None:
    """The actor of a request, or None when it must log in first."""
    if keys.token is None:
        return LOCAL_ACTOR
    if session:
        actor = read_session(keys, session, now_s)
        if actor is not None:
            return actor
    if authorization and bearer_matches(authorization, keys.token):
        return "API token holder"
    return None


KeysDep = NamedDependency[Keys]
"""A console handler's `keys` parameter: the console's one `Keys` (its named dependency)."""
