"""Every route the serve mounts (the API, the bridge, /metrics, the hooks and /v1/triggers,
the console) declares its parameters with Litestar's explicit markers (`ServicesDep`,
`KeysDep`, `FromPath`, `FromQuery`, `JSONBody`): building the whole app warns of nothing
deprecated (inferred dependencies and parameters stop working in Litestar 3)."""

from __future__ import annotations

import warnings
from typing import Any, cast

from dagnats.api.app import create_app
from dagnats.api.bridge_routes import bridge_route_handlers
from dagnats.api.serving import metrics_route
from dagnats.api.triggers_routes import Hooks, hook_route_handlers
from dagnats.console import console_handlers
from dagnats.observe.metrics import Metrics


def test_building_the_served_app_warns_of_nothing_deprecated() -> None:
    unused: Any = None  # the handlers only read these when a request comes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        handlers = [
            *bridge_route_handlers(unused), metrics_route(Metrics()),
            *hook_route_handlers(Hooks(unused, unused)), *console_handlers(None),
        ]  # fmt: skip
        app = create_app(cast(Any, None), extra_route_handlers=handlers)
    shown = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    assert shown == [], shown
    paths = {route.path for route in app.routes}
    assert {"/v1/runs/{run_id:str}", "/console/triggers", "/v1/triggers"} <= paths, paths

