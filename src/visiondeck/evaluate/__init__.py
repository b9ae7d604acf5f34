"""Evaluation: metrics, calibration, rejection, reports, cross-validation, compare, ablate.

Names resolve lazily; `metrics` and `calibration` are numpy-only.

- `evaluate_run(run_dir, split="test", *, tta, positive_class, target_sensitivity,
  reject_method, reject_keep, ood_dir, ...) -> EvaluationResult` writes RUN/evaluation/
  (metrics.json with a flat "headline", calibration.json, predictions.csv, plots/,
  report.html, summary.png).
- `cross_validate(recipe, folds)`, `compare_models(sources)`, `ablate(recipe, vary)`.
"""

from __future__ import annotations

from visiondeck._lazy import lazy_exports

_LAZY: dict[str, str] = {
    "EvaluationError": "predict",
    "EvaluationResult": "core",
    "evaluate_run": "core",
    "CVResult": "cv",
    "cross_validate": "cv",
    "train_fold": "cv",
    "CompareResult": "compare",
    "compare_models": "compare",
    "AblationResult": "ablate",
    "ablate": "ablate",
    "parse_vary": "ablate",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
