"""Drift monitoring: reference statistics, live windows, drift tests, reports and retraining.

Torch-free and low in the dependency table (numpy at import; Jinja2 only when a report is
rendered), so `export` can build the reference at export time and `serve` can watch live
traffic against it. The pieces:

- `reference`: `ReferenceStats` stored in the Bundle (`reference.json`) by `visiondeck export`;
- `window`: `SlidingWindow` of live predictions (the service) and `WindowData` (any source);
- `assess`: `assess(reference, window)` → `DriftAssessment` (scores, thresholds, alarms);
- `report`: the HTML drift report of `visiondeck monitor report`;
- `retrain`: the decision and data gathering of `visiondeck retrain`.
"""

from __future__ import annotations

from visiondeck.monitor.assess import (
    DriftAssessment,
    DriftThresholds,
    FeatureDrift,
    LiveAccuracy,
    assess,
    live_accuracy,
)
from visiondeck.monitor.errors import MonitorError
from visiondeck.monitor.reference import (
    REFERENCE_FILE,
    EmbeddingSummary,
    ReferenceStats,
    brightness_contrast,
    build_reference,
    image_features,
    load_reference,
    save_reference,
)
from visiondeck.monitor.stats import FeatureSummary
from visiondeck.monitor.window import SlidingWindow, WindowData

__all__ = [
    "REFERENCE_FILE", "DriftAssessment", "DriftThresholds", "EmbeddingSummary", "FeatureDrift",
    "FeatureSummary", "LiveAccuracy", "MonitorError", "ReferenceStats", "SlidingWindow",
    "WindowData", "assess", "brightness_contrast", "build_reference", "image_features",
    "live_accuracy",
    "load_reference", "save_reference",
]  # fmt: skip
