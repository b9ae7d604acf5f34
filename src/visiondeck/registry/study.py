"""Ablations and cross-validations as MLflow runs: one parent, one nested child per cell.

`MlflowStudy` follows `visiondeck.evaluate.tracking.StudyTracker`. The parent run is the
study folder's own run (linked in `STUDY/mlflow.json`): params are the study's definition
(factors, design, seeds or folds, and the base recipe under `recipe.`), metrics its summary
(mean and std per metric, main effects), artifacts its tables and chart. Each cell or fold
is a training run nested under it (tag `mlflow.parentRunId`, same experiment), trained
through the ordinary `MlflowTracker` so its per-epoch metrics arrive as they happen; its
own overrides (`cell.train.loss`, `cv.fold`) are params beside the full recipe, and its
test metrics (`test_accuracy`...) are added once it has been evaluated.

Like the rest of tracking, recording never fails the study once it has started: a store
that goes away mid-study costs warnings, not the cells already trained.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from visiondeck.config import Recipe, TrackingConfig
from visiondeck.registry.errors import TrackingWarning
from visiondeck.registry.runlog import (
    close_run,
    log_artifacts,
    log_evaluation,
    log_metrics,
    open_run,
)
from visiondeck.registry.store import read_link
from visiondeck.registry.tracking import TAG, MlflowTracker, flatten, tracker_for

__all__ = ["MlflowStudy", "study_tracker_for"]


class MlflowStudy:
    """The MLflow side of `visiondeck.evaluate.tracking.StudyTracker`.

    `tracking` is the recipe's tracking section and `runs_root` its output_dir (the
    embedded store lives in `runs_root/mlruns`, the one `visiondeck runs list` reads).
    """

    def __init__(self, tracking: TrackingConfig | None = None,
                 runs_root: str | os.PathLike[str] = "runs") -> None:
        self.tracking = tracking or TrackingConfig()
        self.runs_root = Path(runs_root)
        self.folder: Path | None = None
        self.run_id: str | None = None

    def start(self, folder: Path, *, kind: str, name: str,
              params: Mapping[str, Any]) -> None:
        """Open (or re-open, for a resumed study) the parent run.

        Raises `RegistryError` when the store is unreachable: better before the first cell
        trains than after the last one.
        """
        self.folder = Path(folder)
        self.run_id = open_run(self.folder, name=name, tracking=self.tracking,
                               runs_root=self.runs_root, kind=kind, params=flatten(params))
        link = read_link(self.folder)
        if self.run_id is not None and link is not None:  # a resumed study runs again
            try:
                link.store(self.tracking.uri).client.update_run(self.run_id, status="RUNNING")
            except Exception as exc:
                warnings.warn(f"MLflow: could not re-open run {self.run_id}: {exc}",
                              TrackingWarning, stacklevel=2)

    def child(self, run_dir: Path, recipe: Recipe, *, kind: str,
              params: Mapping[str, Any]) -> MlflowTracker | None:
        """A training tracker whose run is nested under the study's."""
        if self.folder is None or self.run_id is None:
            return None
        return MlflowTracker(recipe.tracking, self.runs_root, parent=self.folder, kind=kind,
                             params=params)

    def child_done(self, run_dir: Path, metrics_json: Path, *, kind: str,
                   params: Mapping[str, Any]) -> None:
        """The cell's test metrics on its child run, once.

        A cell reused from an earlier study that was not tracked gets its nested run now
        (params, no per-epoch history); one whose run already holds its evaluation is left
        alone, so resuming a study never doubles a child's metrics.
        """
        if self.folder is None or self.run_id is None:
            return
        run_dir = Path(run_dir)
        try:
            link = read_link(run_dir)
            store = link.store(self.tracking.uri) if link is not None else None
            if store is None or not store.run_exists(link.run_id):
                open_run(run_dir, tracking=self.tracking, runs_root=self.runs_root,
                         kind=kind, parent=self.folder, params=params)
                link = read_link(run_dir)
                store = link.store(self.tracking.uri) if link is not None else None
            if store is None or link is None:
                return
            run = store.client.get_run(link.run_id)
            if run.data.tags.get(f"{TAG}evaluated") == "true":
                return
            if run.info.status == "RUNNING":  # opened just now for a reused cell
                store.client.set_terminated(link.run_id, "FINISHED")
        except Exception as exc:  # recording must not fail the study
            warnings.warn(f"MLflow: could not record {run_dir}: {exc}", TrackingWarning,
                          stacklevel=2)
            return
        report = Path(metrics_json).parent / "report.html"
        log_evaluation(run_dir, metrics_json, report if report.is_file() else None)

    def finish(self, *, metrics: Mapping[str, float], artifacts: Sequence[Path],
               status: str = "FINISHED") -> None:
        """Summary metrics and files on the parent, then close it."""
        if self.folder is None or self.run_id is None:
            return
        if metrics:
            log_metrics(self.folder, metrics)
        files = [Path(p) for p in artifacts if Path(p).exists()]
        if files:
            log_artifacts(self.folder, files, "study")
        close_run(self.folder, status)


def study_tracker_for(recipe: Recipe) -> MlflowStudy | None:
    """The study tracker a recipe asks for, or None when tracking is off (or MLflow is
    missing with nothing configured: the same rule as `tracker_for`)."""
    if tracker_for(recipe) is None:
        return None
    return MlflowStudy(recipe.tracking, recipe.output_dir)
