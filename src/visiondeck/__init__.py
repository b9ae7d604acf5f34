"""VisionDeck: local-first image classification.

`import visiondeck` stays light: it imports no torch, Lightning, timm, MLflow or ONNX
Runtime. Public names are resolved lazily on first attribute access, so notebooks can write
`visiondeck.scan(...)` while the CLI's `--help` and the serving process stay fast.
"""

from __future__ import annotations

from visiondeck._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "Recipe": "visiondeck.config",
    "load_recipe": "visiondeck.config",
    "decode_image": "visiondeck.imaging",
    "scan": "visiondeck.data.catalog",
    "Catalog": "visiondeck.data.catalog",
    "validate": "visiondeck.data.validate",
    "DataReport": "visiondeck.data.validate",
    "make_split": "visiondeck.data.split",
    "load_split": "visiondeck.data.split",
    "Split": "visiondeck.data.split",
    "Bundle": "visiondeck.export.bundle",
    "load_bundle": "visiondeck.export.bundle",
    "Predictor": "visiondeck.export.predictor",
    "Prediction": "visiondeck.export.predictor",
    "evaluate_run": "visiondeck.evaluate.core",
    "explain_image": "visiondeck.explain.cam",
}

__all__ = ["__version__", *sorted(_LAZY)]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
