"""The checks of `--http` and the API token that `dagnats serve` makes before it starts:
the address's form, the token's source and rules, loopback without a token, the HTTP
worker bridge's heartbeat timeout (`$DAGNATS_BRIDGE_HEARTBEAT_TIMEOUT`). Plain Python,
no HTTP framework: serve makes them at once and imports Litestar and uvicorn only when the
API starts (after the engine, `dagnats/cli/serve.py`). `auth.py` holds the request guard,
`server.py` the uvicorn server; both use these.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Final

from dagnats.api import limits as api_limits
from dagnats.runtime import settings
from kernel.errors import DagnatsError

TOKEN_ENV: Final = "DAGNATS_API_TOKEN"
LOOPBACK_NAMES: Final = frozenset(("localhost", "localhost.localdomain", "ip6-localhost"))
PORT_MAX: Final = 65_535


class HttpAddressError(DagnatsError):
    """`--http` is not an address, or it cannot be bound."""

    def __init__(self, message: str, hint: str) -> None:
        self.hint = hint
        super().__init__(message)


def parse_address(text: str) -> tuple[str, int]:
    """(host, port) of `--http`: `HOST:PORT`, `[V6]:PORT` or `PORT` (host 127.0.0.1).

    Raises:
        HttpAddressError: naming the value and the form.
    """
    value = text.strip()
    host, port_text = "127.0.0.1", value
    if value.startswith("["):
        closing = value.find("]")
        if closing > 0 and value[closing + 1 : closing + 2] == ":":
            host, port_text = value[1:closing], value[closing + 2 :]
    elif ":" in value:
        host, _, port_text = value.rpartition(":")
    if not port_text.isdigit() or not 0 <= int(port_text) <= PORT_MAX or not host:
        raise HttpAddressError(
            f"--http {text!r} is not HOST:PORT with a port in 0..{PORT_MAX} (0 = a free one)",
            "e.g. --http 127.0.0.1:8080, --http [::1]:8080, --http 0.0.0.0:8080 with a token",
        )
    return host, int(port_text)


class TokenError(DagnatsError):
    """The token given is unusable (unreadable file, too short, not visible ASCII)."""

    def __init__(self, message: str, hint: str) -> None:
        self.hint = hint
        super().__init__(message)


class TokenRequiredError(TokenError):
    """An address beyond loopback without a token."""


def load_token(token_file: Path | None, environ: dict[str, str] | None = None) -> str | None:
    """The API token: the first line of `token_file`, else `$DAGNATS_API_TOKEN`, else None.

    Raises:
        TokenError: the file cannot be read, or the token breaks the rules (length, ASCII).
    """
    env = os.environ if environ is None else environ
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or str(error)
            raise TokenError(
                f"--api-token-file {token_file}: {reason}", "pass a readable UTF-8 file"
            ) from None
        lines = text.splitlines()
        return check_token(lines[0].strip() if lines else "", f"--api-token-file {token_file}")
    value = env.get(TOKEN_ENV, "")
    if not value:
        return None
    return check_token(value.strip(), f"${TOKEN_ENV}")


def check_token(token: str, source: str) -> str:
    """`token` if it is long enough and visible ASCII only (it travels in a header).

    Raises:
        TokenError: naming the source and the rule, never the token.
    """
    low, high = api_limits.api_token_chars_min, api_limits.api_token_chars_max
    if not low <= len(token) <= high:
        raise TokenError(
            f"{source}: the token has {len(token)} characters; it must have {low}..{high}",
            "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
        )
    if not all(33 <= ord(char) <= 126 for char in token):
        raise TokenError(
            f"{source}: the token must be visible ASCII characters only (no spaces)",
            "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
        )
    return token


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 with or without brackets) is loopback."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name we cannot vouch for: it may resolve beyond this machine


def require_token_beyond_loopback(host: str, token: str | None) -> None:
    """Refuse an address beyond loopback when no token is configured.

    Raises:
        TokenRequiredError: naming the address and the two ways to give a token.
    """
    if token is None and not is_loopback(host):
        raise TokenRequiredError(
            f"--http {host}: binding the HTTP API beyond loopback needs a bearer token",
            f"pass --api-token-file FILE or set ${TOKEN_ENV} (or bind 127.0.0.1)",
        )


HEARTBEAT_ENV: Final = "DAGNATS_BRIDGE_HEARTBEAT_TIMEOUT"


class BridgeSettingError(DagnatsError):
    """$DAGNATS_BRIDGE_HEARTBEAT_TIMEOUT is not a number of seconds within its bounds."""

    def __init__(self, message: str, hint: str) -> None:
        self.hint = hint
        super().__init__(message)


def bridge_ack_wait_ms(environ: dict[str, str] | None = None) -> int:
    """The bridge's heartbeat timeout in ms: `$DAGNATS_BRIDGE_HEARTBEAT_TIMEOUT` (seconds), or
    the task consumers' default.

    Raises:
        BridgeSettingError: not a number within 0.5..3600 s.
    """
    text = (os.environ if environ is None else environ).get(HEARTBEAT_ENV, "").strip()
    if not text:
        return settings.task_ack_wait_ms_default
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    low, high = api_limits.bridge_heartbeat_timeout_s_min, api_limits.bridge_heartbeat_timeout_s_max
    if not low <= seconds <= high:
        raise BridgeSettingError(
            f"{HEARTBEAT_ENV}={text[:40]!r} must be seconds within {low:g}..{high:g}",
            "use the --heartbeat-timeout of the native workers of the same task types",
        )
    return int(seconds * 1000)
