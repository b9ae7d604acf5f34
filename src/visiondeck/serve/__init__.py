"""The inference service: FastAPI + ONNX Runtime, micro-batched, with prediction history.

`create_app(ServeSettings(bundle=...))` builds an app (nothing is created at import
time); `visiondeck serve BUNDLE_OR_URI` runs it under uvicorn. Importing this package, and
starting the app, never imports torch: only `POST /explain` does, on first use.
Names resolve lazily so `import visiondeck.serve` costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "Engine": "visiondeck.serve.engine",
    "ImageStats": "visiondeck.serve.observers",
    "PredictionEvent": "visiondeck.serve.observers",
    "PredictionObserver": "visiondeck.serve.observers",
    "PredictionQuery": "visiondeck.serve.store",
    "PredictionRecord": "visiondeck.serve.store",
    "PredictionStore": "visiondeck.serve.store",
    "ServeSettings": "visiondeck.serve.settings",
    "create_app": "visiondeck.serve.app",
    "create_app_from_env": "visiondeck.serve.app",
    "create_key": "visiondeck.serve.auth",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'visiondeck.serve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
