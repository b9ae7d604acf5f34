"""Experiment tracking and the model registry (MLflow lives here and only here).

- `store`: which store (embedded SQLite under `runs/mlruns/`, or a server), run-folder links;
- `tracking`: `MlflowTracker`, the trainer's tracker; `tracker_for(recipe)`;
- `runlog`: `log_evaluation`, `log_bundle`, `open_run` / `log_metrics` / `close_run`;
- `study`: `MlflowStudy`, an ablation or a CV as a parent run with nested cells/folds;
- `models`: `register`, `promote`; `resolve`: `resolve_bundle` (`models:/NAME@ALIAS` → folder);
- `runs`: reading runs back (`list_runs`, `find_run`, `diff_runs`).

Names resolve lazily and MLflow itself is imported only when a store is used, so
`visiondeck.export.bundle` can call `resolve_bundle` without paying for it on plain paths.
"""

from __future__ import annotations

from visiondeck._lazy import lazy_exports

_LAZY: dict[str, str] = {
    "BundleArtifact": "visiondeck.registry.runlog",
    "MlflowStudy": "visiondeck.registry.study",
    "MlflowTracker": "visiondeck.registry.tracking",
    "ModelRef": "visiondeck.registry.resolve",
    "Promotion": "visiondeck.registry.models",
    "Registration": "visiondeck.registry.models",
    "RegistryError": "visiondeck.registry.errors",
    "RegistryRefusal": "visiondeck.registry.errors",
    "RunDiff": "visiondeck.registry.runs",
    "RunLink": "visiondeck.registry.store",
    "RunSummary": "visiondeck.registry.runs",
    "Store": "visiondeck.registry.store",
    "TrackingWarning": "visiondeck.registry.errors",
    "close_run": "visiondeck.registry.runlog",
    "diff_runs": "visiondeck.registry.runs",
    "find_run": "visiondeck.registry.runs",
    "list_runs": "visiondeck.registry.runs",
    "log_artifacts": "visiondeck.registry.runlog",
    "log_bundle": "visiondeck.registry.runlog",
    "log_evaluation": "visiondeck.registry.runlog",
    "log_metrics": "visiondeck.registry.runlog",
    "open_run": "visiondeck.registry.runlog",
    "open_store": "visiondeck.registry.store",
    "parse_model_uri": "visiondeck.registry.resolve",
    "promote": "visiondeck.registry.models",
    "read_link": "visiondeck.registry.store",
    "register": "visiondeck.registry.models",
    "resolve_bundle": "visiondeck.registry.resolve",
    "study_tracker_for": "visiondeck.registry.study",
    "tracker_for": "visiondeck.registry.tracking",
    "tracker_for_run": "visiondeck.registry.tracking",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
