"""The inference service: FastAPI + ONNX Runtime, micro-batched, with prediction history.

`create_app(ServeSettings(bundle=...))` builds an app (nothing is created at import
time); `visiondeck serve BUNDLE_OR_URI` runs it under uvicorn (gunicorn with uvicorn workers
for `--workers N`). Importing this package, and starting the app, never imports torch:
only `POST /explain` does, on first use.
Names resolve lazily so `import visiondeck.serve` costs nothing.
"""

from __future__ import annotations

from visiondeck._lazy import lazy_exports

_LAZY: dict[str, str] = {
    "Engine": "visiondeck.serve.inference.engine",
    "ImageStats": "visiondeck.serve.monitoring.observers",
    "PredictionEvent": "visiondeck.serve.monitoring.observers",
    "PredictionObserver": "visiondeck.serve.monitoring.observers",
    "PredictionQuery": "visiondeck.serve.history.store",
    "PredictionRecord": "visiondeck.serve.history.store",
    "PredictionStore": "visiondeck.serve.history.store",
    "ServeSettings": "visiondeck.serve.settings",
    "create_app": "visiondeck.serve.app",
    "create_app_from_env": "visiondeck.serve.app",
    "create_key": "visiondeck.serve.api.auth",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
