"""Logging to the MLflow run of a folder: evaluation, the Bundle, ablations and CV folds.

Everything here is keyed by a folder whose `mlflow.json` names its MLflow run (written by
`MlflowTracker` during training, or by `open_run`). So `visiondeck evaluate RUN` and
`visiondeck export RUN` land on the run that trained the model without passing ids around.
A folder with no link gets a new run when its recipe has tracking enabled (e.g. a run
trained from a notebook without a tracker).

These functions never fail the work they record: they return the MLflow run id, or None
when tracking is off or the store failed - the latter with a `TrackingWarning` that says why.

For an ablation or a cross-validation:

    open_run(folder, name="ablation-lr", tracking=recipe.tracking,
             runs_root=recipe.output_dir, kind="ablation", params={"grid": ...})
    for cell in cells:   # each cell is a training run, nested under the parent
        train(cell_recipe, run_dir=..., tracker=tracker_for(cell_recipe, parent=folder))
    log_metrics(folder, {"best_val_acc": ...}); close_run(folder)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visiondeck._files import tree_sha256
from visiondeck.config import TrackingConfig, load_recipe
from visiondeck.registry.errors import TrackingWarning
from visiondeck.registry.store import Store, read_link
from visiondeck.registry.tracking import TAG, MlflowTracker, finite, log_batch, read_json

__all__ = [
    "DIGEST_TAG", "BundleArtifact", "bundle_digest", "close_run", "log_artifacts", "log_bundle",
    "log_evaluation", "log_metrics", "open_run", "upload_bundle",
]  # fmt: skip


def open_run(folder: str | os.PathLike[str], *, name: str | None = None,
             tracking: TrackingConfig | None = None,
             runs_root: str | os.PathLike[str] | None = None, kind: str = "run",
             parent: str | os.PathLike[str] | None = None,
             params: Mapping[str, Any] | None = None,
             tags: Mapping[str, str] | None = None) -> str | None:
    """Start (or re-attach to) the MLflow run of any folder and link it in `mlflow.json`.

    `name` is the experiment for a top-level run (default: the folder's name); `parent`
    (a linked folder or a run id) nests this run under another. Returns the run id, or
    None when `tracking.enabled` is false. Unlike the logging helpers this raises
    `RegistryError` when the store is unreachable: it is called before the work starts.
    """
    folder = Path(folder)
    tracking = tracking or TrackingConfig()
    if not tracking.enabled:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    existing = read_link(folder)
    if existing is not None and existing.store(tracking.uri).run_exists(existing.run_id):
        return existing.run_id
    tracker = MlflowTracker(tracking, runs_root or folder.resolve().parent, parent=parent,
                            kind=kind, tags=tags)
    return tracker.begin(folder, experiment=tracking.experiment or name or folder.name,
                         params=params)


def _tracking_of(folder: Path) -> TrackingConfig:
    recipe_file = folder / "recipe.yaml"
    if recipe_file.is_file():
        try:
            return load_recipe(recipe_file).tracking
        except Exception:  # an unreadable recipe is training's problem, not tracking's
            pass
    return TrackingConfig()


def _attach(folder: Path, *, kind: str, create: bool) -> tuple[Store, str] | None:
    """The store and run id of a folder; opens a run when it has none and may."""
    tracking = _tracking_of(folder)
    link = read_link(folder)
    if link is not None:
        store = link.store(tracking.uri)
        if store.run_exists(link.run_id):
            return store, link.run_id
    if not create or not tracking.enabled:
        return None
    run_id = open_run(folder, tracking=tracking, runs_root=folder.resolve().parent, kind=kind)
    link = read_link(folder)
    if run_id is None or link is None:
        return None
    return link.store(tracking.uri), run_id


def _safely(what: str, folder: Path, action: Callable[[Store, str], Any], *,
            create: bool = True, kind: str = "run") -> str | None:
    try:
        attached = _attach(folder, kind=kind, create=create)
        if attached is None:
            return None
        store, run_id = attached
        action(store, run_id)
        return run_id
    except Exception as exc:  # recording must never fail the work it records
        warnings.warn(f"MLflow: could not {what} for {folder}: {exc}", TrackingWarning,
                      stacklevel=3)
        return None


def log_metrics(folder: str | os.PathLike[str], metrics: Mapping[str, Any], *,
                step: int | None = None, prefix: str = "") -> str | None:
    """Log scalar metrics (non-finite values are skipped) on the folder's run."""
    values = {f"{prefix}{k}": v for k, v in finite(metrics).items()}
    return _safely("log metrics", Path(folder),
                   lambda store, run_id: log_batch(store, run_id, metrics=values,
                                                   step=step or 0))


def log_artifacts(folder: str | os.PathLike[str], paths: Iterable[str | os.PathLike[str]],
                  artifact_path: str | None = None) -> str | None:
    """Upload files and whole folders to the folder's run under `artifact_path`."""
    items = [Path(p) for p in paths]

    def upload(store: Store, run_id: str) -> None:
        for item in items:
            if item.is_dir():
                sub = f"{artifact_path}/{item.name}" if artifact_path else item.name
                store.client.log_artifacts(run_id, str(item), sub)
            elif item.is_file():
                store.client.log_artifact(run_id, str(item), artifact_path)

    return _safely("log artifacts", Path(folder), upload)


def close_run(folder: str | os.PathLike[str], status: str = "FINISHED") -> str | None:
    """Mark the folder's run FINISHED (or FAILED / KILLED)."""
    return _safely("close the run", Path(folder),
                   lambda store, run_id: store.client.set_terminated(run_id, status),
                   create=False)


def log_evaluation(run_dir: str | os.PathLike[str], metrics_json: str | os.PathLike[str],
                   report_html: str | os.PathLike[str] | None = None, *,
                   artifacts_dir: str | os.PathLike[str] | None = None) -> str | None:
    """Attach an evaluation to the run's MLflow run.

    Metrics: the flat "headline" dict of metrics.json, logged as `test_<name>`. Artifacts
    under `evaluation/`: metrics.json, report.html and, when given, every file of
    `artifacts_dir` (plots, calibration.json...).
    """
    metrics_path = Path(metrics_json)
    data = read_json(metrics_path)
    headline = data.get("headline") if isinstance(data.get("headline"), dict) else {}
    values = {f"test_{k}": v for k, v in finite(headline or {}).items()}
    files = [metrics_path] + ([Path(report_html)] if report_html else [])

    def upload(store: Store, run_id: str) -> None:
        log_batch(store, run_id, metrics=values, tags={f"{TAG}evaluated": "true"})
        if artifacts_dir is not None and Path(artifacts_dir).is_dir():
            store.client.log_artifacts(run_id, str(artifacts_dir), "evaluation")
        for item in files:
            if item.is_file():
                store.client.log_artifact(run_id, str(item), "evaluation")

    return _safely("log the evaluation", Path(run_dir), upload, kind="evaluate")


# ------------------------------------------------------------------------------ Bundles


@dataclass(frozen=True)
class BundleArtifact:
    """Where a Bundle was logged; `source` is what a model version points at."""

    run_id: str
    artifact_path: str
    digest: str

    @property
    def source(self) -> str:
        return f"runs:/{self.run_id}/{self.artifact_path}"


#: the model-version tag `register` records a Bundle's digest under, and `resolve` checks
DIGEST_TAG = f"{TAG}bundle_digest"


def bundle_digest(bundle_dir: str | os.PathLike[str]) -> str:
    """sha256 over every file of a Bundle (relative names and contents), order-free.

    Hidden files (an interrupted atomic write's `.bundle.json.tmp`) are left out.
    """
    return tree_sha256(bundle_dir)


def upload_bundle(store: Store, run_id: str, bundle_dir: str | os.PathLike[str],
                  digest: str | None = None) -> BundleArtifact:
    """Upload a Bundle to `bundle-<digest12>/` of a run, unless that content is there.

    Content addressing is what keeps model versions immutable: a version points at
    `runs:/RUN/bundle-<digest>`, and a later export of the same run lands elsewhere.
    """
    folder = Path(bundle_dir)
    digest = digest or bundle_digest(folder)
    path = f"bundle-{digest[:12]}"
    present = {Path(f.path).name for f in store.client.list_artifacts(run_id, path)}
    if "bundle.json" not in present:
        for item in sorted(folder.iterdir()):
            if item.name.startswith("."):
                continue
            if item.is_dir():
                store.client.log_artifacts(run_id, str(item), f"{path}/{item.name}")
            else:
                store.client.log_artifact(run_id, str(item), path)
    log_batch(store, run_id, tags={f"{TAG}bundle.artifact_path": path,
                                   f"{TAG}bundle.digest": digest})
    return BundleArtifact(run_id, path, digest)


def log_bundle(run_dir: str | os.PathLike[str],
               bundle_dir: str | os.PathLike[str]) -> BundleArtifact | None:
    """Log an exported Bundle on the run's MLflow run (content-addressed, see
    `upload_bundle`); None when tracking is off or the store failed."""
    result: list[BundleArtifact] = []
    run_id = _safely("log the Bundle", Path(run_dir),
                     lambda store, rid: result.append(upload_bundle(store, rid, bundle_dir)),
                     kind="export")
    return result[0] if run_id and result else None
