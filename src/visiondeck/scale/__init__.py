"""Scale-out engines: the same stages on a Ray cluster (`pip install 'visiondeck[ray]'`):
batch scoring (`ray_predict`) and studies, one Ray task per ablation cell or CV fold
(`ray_study`).

Nothing here imports Ray at import time; `scale.rows` (the one layout of a prediction row) is
used by the local `visiondeck predict` too.
"""

from __future__ import annotations

from visiondeck._lazy import lazy_exports

__all__ = ["RayPredictResult", "RayStudyExecutor", "ablate_on_ray", "cross_validate_on_ray",
           "predict_on_ray"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "RayPredictResult": "ray_predict",
    "predict_on_ray": "ray_predict",
    "RayStudyExecutor": "ray_study",
    "ablate_on_ray": "ray_study",
    "cross_validate_on_ray": "ray_study",
})
