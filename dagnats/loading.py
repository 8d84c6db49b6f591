"""Load a user's object named `MODULE:ATTR` (a module path or a `.py` file, from the cwd)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from kernel.errors import DagnatsError


class LoadError(DagnatsError):
    """The module or attribute named by a `MODULE:ATTR` spec cannot be loaded."""

    def __init__(self, message: str, hint: str) -> None:
        self.hint = hint
        super().__init__(message)


def load_attribute(spec: str, what: str) -> object:
    """The attribute `ATTR` of module `MODULE` named by `spec` (`what` names it in errors).

    Raises:
        LoadError: the spec is not MODULE:ATTR, the module does not import, or has no ATTR.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise LoadError(f"{what} {spec!r} is not MODULE:ATTR", "e.g. examples.order.worker:worker")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        if module_name.endswith(".py"):
            name = f"dagnats_user_{Path(module_name).stem}"
            module_spec = importlib.util.spec_from_file_location(name, module_name)
            if module_spec is None or module_spec.loader is None:
                raise ImportError(f"cannot load {module_name}")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except (ImportError, OSError) as error:
        raise LoadError(
            f"cannot import {module_name!r}: {error}", "run from your project's root"
        ) from None
    if not hasattr(module, attr):
        raise LoadError(
            f"{module_name} has no {attr!r}", f"name the {what} object in {module_name}"
        )
    return getattr(module, attr)
