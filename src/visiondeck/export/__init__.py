"""The Bundle (model.onnx + weights.safetensors + bundle.json) and everything around it.

`visiondeck.export.bundle` and `visiondeck.export.predictor` are torch-free (numpy, Pillow,
ONNX Runtime) so a serving image can read and run Bundles; export, pruning and the PyTorch
side of the benchmark import torch inside their functions. Names resolve lazily so importing
this package costs nothing.
"""

from __future__ import annotations

from visiondeck._lazy import lazy_exports

_LAZY: dict[str, str] = {
    "Bundle": "visiondeck.export.bundle",
    "BundleError": "visiondeck.export.errors",
    "Calibration": "visiondeck.export.bundle",
    "ExportError": "visiondeck.export.errors",
    "ExportResult": "visiondeck.export.onnx_export",
    "InputSpec": "visiondeck.export.bundle",
    "Prediction": "visiondeck.export.predictor",
    "Predictor": "visiondeck.export.predictor",
    "bench_bundle": "visiondeck.export.bench",
    "export_run": "visiondeck.export.onnx_export",
    "load_bundle": "visiondeck.export.bundle",
    "write_bundle_json": "visiondeck.export.bundle",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
