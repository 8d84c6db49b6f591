"""What the HTTP API's handlers work with: the serve's NATS clients and its health.

`Services` holds the `Client` every REST handler goes through (role `client`), one approver
`Client` per approver identity that decides over HTTP (each with its own credential from the
data dir, so the engine records the identity the credential pins), the JetStream context of
the serve's own connection (the idempotency bucket, health), and callables saying whether the
engine consumes and whether the serve is ready. The bridge (`dagnats/api/bridge*.py`) opens
what it needs with `connection(role)`.

How an HTTP approver maps to a credential: a decision's `by` names an approver identity; the
API decides with that identity's credential (`<data dir>/credentials/approver-<by>.json`, or
`approver.json` whose identity is the serve's OS user, which is also the default when `by` is
left out). A `by` without a credential is 403: anyone holding the API token may decide as any
approver the serve holds a credential for, and as no one else.

Handlers never write history: every write is a command through `Client` to the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from litestar.di import NamedDependency
from nats.js import JetStreamContext

from dagnats.api import limits as api_limits
from dagnats.api.problems import ProblemError
from dagnats.client import Client
from dagnats.runtime import credentials
from dagnats.runtime.connection import Connection
from dagnats.runtime.roles import Role


def _nothing() -> None:
    pass


def _always() -> bool:
    return True


class Services:
    """The serve's clients and health, shared by every request."""

    def __init__(
        self,
        client: Client,
        *,
        url: str,
        data_dir: Path | None,
        js: JetStreamContext | None = None,
        engine_running: Callable[[], bool] = _always,
        ready: Callable[[], bool] = _always,
    ) -> None:
        self.client = client
        self.url = url
        self.data_dir = data_dir
        self.js = js if js is not None else client.connection.js
        self.engine_running = engine_running
        self.ready = ready
        # Told after the API changed a managed trigger (serve's webhook routes read again).
        self.triggers_changed: Callable[[], None] = _nothing
        self._approvers: OrderedDict[str, Client] = OrderedDict()
        self._connections: dict[str, Connection] = {}
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        url: str,
        data_dir: Path | None,
        *,
        js: JetStreamContext | None = None,
        engine_running: Callable[[], bool] = _always,
        ready: Callable[[], bool] = _always,
    ) -> Services:
        """Connect the API's client (role `client`) to the serve's NATS."""
        client = await Client.connect(url, role="client", data_dir=data_dir)
        return cls(
            client, url=url, data_dir=data_dir, js=js, engine_running=engine_running,
            ready=ready,
        )  # fmt: skip

    def sqlite_path(self) -> Path | None:
        """The query tables' file (`<data dir>/dagnats.sqlite`), None without a data dir."""
        from dagnats.runtime import projector

        return None if self.data_dir is None else self.data_dir / projector.SQLITE_FILE

    def approver_identities(self) -> dict[str, Path]:
        """The approver identities the serve holds a credential for, and their files."""
        if self.data_dir is None:
            return {}
        directory = credentials.credentials_dir(self.data_dir)
        found: dict[str, Path] = {}
        for path in sorted(directory.glob("approver*.json")):
            with contextlib.suppress(Exception):
                credential = credentials.read_credential(path)
                if credential.role == "approver":
                    found.setdefault(credential.identity, path)
        return found

    async def approver(self, by: str) -> Client:
        """The approver client deciding as `by` (the default approver when empty).

        Raises:
            ProblemError: 403 when the serve holds no approver credential for `by`.
        """
        known = self.approver_identities()
        default = credentials.default_approver_identity()
        no_credentials = (
            self.data_dir is None or not credentials.credentials_dir(self.data_dir).exists()
        )
        if no_credentials:  # an external NATS without credentials in a data dir
            identity, creds = by or default, None
        elif not by:
            assert self.data_dir is not None
            default_file = credentials.credentials_dir(self.data_dir) / "approver.json"
            if not default_file.exists():
                raise _no_approver("(default)", known)
            identity, creds = credentials.read_credential(default_file).identity, default_file
        elif by in known:
            identity, creds = by, known[by]
        else:
            raise _no_approver(by, known)
        async with self._lock:
            client = self._approvers.get(identity)
            if client is not None:
                self._approvers.move_to_end(identity)
                return client
            client = await Client.connect(
                self.url, role="approver", creds=creds, data_dir=self.data_dir
            )
            self._approvers[identity] = client
            while len(self._approvers) > api_limits.approver_clients_max:
                _, oldest = self._approvers.popitem(last=False)
                await oldest.close()
            return client

    async def connection(self, role: Role) -> Connection:
        """A connection in `role` (opened once, closed with the services): for the bridge."""
        async with self._lock:
            found = self._connections.get(role)
            if found is None:
                found = await Connection.open(self.url, role=role, data_dir=self.data_dir)
                self._connections[role] = found
            return found

    async def close(self) -> None:
        for client in [*self._approvers.values(), self.client]:
            with contextlib.suppress(Exception):
                await client.close()
        for connection in self._connections.values():
            with contextlib.suppress(Exception):
                await connection.close()
        self._approvers.clear()
        self._connections.clear()


def _no_approver(by: str, known: dict[str, Path]) -> ProblemError:
    shown = ", ".join(sorted(known)) or "none"
    return ProblemError(
        403,
        f"by {by!r}: the serve holds no approver credential for that identity "
        f"(approvers: {shown})",
        kind="no-approver-credential", field="by",
        hint="add one with dagnats.runtime.credentials.add_approver(data_dir, NAME) and "
        "restart serve, "
        "or leave `by` out",
    )  # fmt: skip


ServicesDep = NamedDependency[Services]
"""A route handler's `services` parameter: the app's one `Services` (its named dependency)."""
