"""Loading the user's app from a MODULE:ATTR path, like `uvicorn module:app`."""

from __future__ import annotations

import importlib
import os
import sys

from pgqueue import ConfigurationError, PgQueue


def load_app(path: str) -> PgQueue:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"{path!r} is not MODULE:ATTR, e.g. myproject.tasks:app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigurationError(
                f"module {module_name!r} not found; run from your project folder or fix PYTHONPATH") from None
        raise
    try:
        app = getattr(module, attr)
    except AttributeError:
        raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(app, PgQueue):
        raise ConfigurationError(
            f"{path} is a {type(app).__name__}, not a PgQueue app; point at the object created with PgQueue()")
    return app
