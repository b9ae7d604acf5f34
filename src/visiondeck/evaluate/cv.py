"""k-fold cross-validation: one run per fold, each evaluated, then mean ± std per metric.

Multi-label data works the same way: its folds are iteratively stratified (`data.split`),
each fold trains with BCE and selects its checkpoint by `val_map`, and the per-fold
headline is the multi-label one (mAP macro/micro, ROC-AUC, F1, subset accuracy, Hamming
loss) with the thresholds chosen on that fold's validation files.

`train.runner.train` always validates on the split's "val" subset; a k-fold split has
none (its non-test files carry a fold number instead). `train_fold` therefore assembles the
same pieces the runner does — `runner.build_system` (split, spec, seeded model), a
`SplitDataModule` built with `fold=k`, the runner's `Classifier` and `build_trainer` — and
writes a run folder `evaluate_run` reads like any other (run.json records `"fold": k`, so
evaluation calibrates on that fold's validation files). The folds share the held-out test
subset, so every fold is scored on the same test images.

With a `tracker` (a `evaluate.tracking.StudyTracker`; the CLI passes MLflow's), the
cross-validation is one parent run (params: folds and the recipe; metrics: mean, std, min
and max of every test metric; artifacts: cv.json and folds.csv) and each fold a nested child
run (`cv.fold` param) that receives its per-epoch metrics while it trains.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visiondeck._files import atomic_write_json, atomic_writer
from visiondeck.config import Recipe, save_recipe
from visiondeck.evaluate.ablate import StudyExecutor, run_in_order
from visiondeck.evaluate.predict import EvaluationError
from visiondeck.evaluate.tracking import StudyTracker, metric_key, unfinished_on_error

if TYPE_CHECKING:
    from visiondeck.train.tracking import Tracker

__all__ = ["CVResult", "FoldJob", "cross_validate", "run_fold", "summarize_folds",
           "summary_metrics", "train_fold"]

FOLD_KIND = "cv-fold"


def _with_folds(recipe: Recipe, folds: int) -> Recipe:
    """The recipe with `data.folds` set; its split is kept apart from the plain split (a
    k-fold split of the same data has different parameters, and prepare refuses to
    overwrite an existing split)."""
    data = recipe.data
    update: dict[str, Any] = {"folds": folds}
    if data.folds != folds and data.prepared is None:
        update["prepared"] = str(Path("prepared") / f"{recipe.name}-cv{folds}")
    return recipe.model_copy(update={"data": data.model_copy(update=update)})


def train_fold(recipe: Recipe, fold: int, run_dir: str | os.PathLike[str], *,
               progress: bool = False, tracker: Tracker | None = None) -> Path:
    """Train on every fold but `fold`, validate on `fold`; returns the run folder.

    `tracker` (see `train.tracking`) gets the params, every epoch's metrics and the end,
    as in `train`.
    """
    import torch

    from visiondeck.train.artifacts import save_trained
    from visiondeck.train.datamodule import SplitDataModule
    from visiondeck.train.losses import class_weights, label_pos_weights
    from visiondeck.train.module import Classifier
    from visiondeck.train.runner import build_system
    from visiondeck.train.tracking import TrackerCallback
    from visiondeck.train.trainer import build_trainer

    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, folder / "recipe.yaml")
    started = time.perf_counter()
    built = build_system(recipe, folder, progress=progress)
    split = built.split
    if split.folds < 2:
        raise EvaluationError("the split has no folds", hint="set data.folds=K (K >= 2)")
    data = SplitDataModule(split, recipe.data, recipe.train, built.spec,
                           cache_dir=built.prepared / "cache" if built.prepared else None,
                           fold=fold, progress=progress)
    # multi-label: per-label n_neg/n_pos of this fold's training files, as the runner does
    weights = (label_pos_weights(data.train_labels) if split.multilabel
               else class_weights(data.train_labels, len(split.classes)))
    system = Classifier(built.system.model, len(split.classes), recipe.train,
                        class_weights=weights, train_transform=data.device_transform(True),
                        eval_transform=data.device_transform(False),
                        multilabel=split.multilabel)
    trainer = build_trainer(recipe.train, folder, progress=progress,
                            extra_callbacks=[TrackerCallback(tracker)] if tracker else None,
                            monitor=system.monitor)
    info: dict[str, Any] = {
        "name": recipe.name, "status": "running", "fold": fold, "folds": split.folds,
        "split": {"id": split.id, "root": str(split.root), "classes": split.classes,
                  "prepared": str(built.prepared) if built.prepared else None,
                  "test_prepared": None},
        "prepare": asdict(built.spec), "class_weights": weights,
    }
    atomic_write_json(folder / "run.json", info)  # tags read it
    if tracker is not None:
        tracker.start(folder, recipe, resumed=False)
    try:
        trainer.fit(system, datamodule=data)
    except BaseException:
        if tracker is not None:
            tracker.finish(folder, "interrupted", {})
        raise
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best and Path(best).exists():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        system.model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()
                                      if k.startswith("model.")})
    save_trained(folder, system.model, recipe=recipe, spec=built.spec,
                 classes=list(split.classes),
                 extra={"task": split.task} if split.multilabel else None)
    metrics = {k: round(float(v), 6) for k, v in trainer.callback_metrics.items()
               if torch.as_tensor(v).numel() == 1}
    info.update({
        "status": "completed", "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        "metrics": metrics, "epochs_run": trainer.current_epoch,
        "duration_s": round(time.perf_counter() - started, 2),
    })
    atomic_write_json(folder / "run.json", info)
    if tracker is not None:
        tracker.finish(folder, "completed", metrics)
    return folder


@dataclass(frozen=True)
class FoldJob:
    """One fold: everything `run_fold` needs, picklable, so the same function runs the fold
    here or in a Ray task on another node."""

    recipe: Recipe  # the fold's (named NAME-foldK)
    fold: int
    run_dir: Path
    evaluate: dict[str, Any]
    params: dict[str, str]
    progress: bool = False

    @property
    def finished(self) -> bool:
        """Evaluated already: resuming the cross-validation reuses the result on disk."""
        return (self.run_dir / "evaluation" / "metrics.json").is_file()


def run_fold(job: FoldJob, tracker: StudyTracker | None = None) -> dict[str, float]:
    """Train and evaluate one fold (or read back its evaluation); its headline metrics.

    A fold trained to the end but not evaluated (stopped during its evaluation) is only
    evaluated; one stopped during training is trained again from the start (`train_fold`
    keeps no resumable state). The fold's child run (under `tracker`'s parent) is created
    here, so a fold run in a Ray task logs its own child run.
    """
    from visiondeck.evaluate.core import evaluate_run

    metrics_file = job.run_dir / "evaluation" / "metrics.json"
    if job.finished:
        headline = json.loads(metrics_file.read_text())["headline"]
    else:
        if not _trained(job.run_dir):
            child = tracker.child(job.run_dir, job.recipe, kind=FOLD_KIND,
                                  params=job.params) if tracker is not None else None
            train_fold(job.recipe, job.fold, job.run_dir, progress=job.progress,
                       tracker=child)
        headline = evaluate_run(job.run_dir, **job.evaluate).headline
    if tracker is not None:
        tracker.child_done(job.run_dir, metrics_file, kind=FOLD_KIND, params=job.params)
    return headline


def _trained(run_dir: Path) -> bool:
    """`train_fold` wrote its model and marked the run completed (its last two steps)."""
    try:
        status = json.loads((run_dir / "run.json").read_text()).get("status")
    except (OSError, ValueError):
        return False
    return status == "completed" and (run_dir / "model").is_dir()


@dataclass
class CVResult:
    out_dir: Path
    folds: int
    runs: list[Path]
    per_fold: list[dict[str, float]]  # headline metrics of each fold (test split)
    summary: dict[str, dict[str, float]] = field(default_factory=dict)  # metric → mean/std


def summarize_folds(per_fold: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """mean, sample std, min and max of each metric present in every fold."""
    if not per_fold:
        return {}
    keys = [k for k in per_fold[0] if all(k in f for f in per_fold)]
    out = {}
    for key in keys:
        values = [float(f[key]) for f in per_fold]
        out[key] = {"mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values), "max": max(values)}
    return out


def cross_validate(recipe: Recipe, folds: int = 5, *, out_dir: str | os.PathLike[str] | None
                   = None, progress: bool = False, evaluate: dict[str, Any] | None = None,
                   on_fold: Any = None, tracker: StudyTracker | None = None,
                   executor: StudyExecutor | None = None) -> CVResult:
    """Train and evaluate one run per fold under OUT/fold-K; write OUT/cv.json, folds.csv.

    A fold whose run already holds `evaluation/metrics.json` is not trained again, so a
    killed cross-validation resumes where it stopped. `evaluate` holds keyword arguments
    for `evaluate_run` (e.g. {"tta": True}); `on_fold(k, headline)` reports progress;
    `tracker` records a parent run with one nested run per fold (None tracks nothing);
    `executor` runs the folds (None: here, in order; see `evaluate.ablate.StudyExecutor`).
    """

    if folds < 2:
        raise EvaluationError(f"cross-validation needs at least 2 folds, not {folds}")
    recipe = _with_folds(recipe, folds)
    root = Path(out_dir) if out_dir else Path(recipe.output_dir) / f"{recipe.name}-cv{folds}"
    root.mkdir(parents=True, exist_ok=True)
    options = {"gradcam_samples": 0, "n_boot": 200, **(evaluate or {})}
    if tracker is not None:
        tracker.start(root, kind="cv", name=recipe.name,
                      params={"folds": folds, "recipe": recipe.model_dump(mode="json")})
    jobs = [FoldJob(recipe.model_copy(update={"name": f"{recipe.name}-fold{fold}"}), fold,
                    root / f"fold-{fold}", options,
                    {"cv.fold": str(fold), "cv.folds": str(folds)}, progress)
            for fold in range(folds)]
    with unfinished_on_error(tracker):
        headlines: dict[int, dict[str, float]] = {}
        for fold, headline in (executor or run_in_order)(run_fold, jobs, tracker):
            headlines[fold] = headline
            if on_fold is not None:
                on_fold(fold, headline)
        runs = [job.run_dir for job in jobs]
        per_fold = [headlines[fold] for fold in range(folds)]
        result = CVResult(root, folds, runs, per_fold, summarize_folds(per_fold))
        _write_results(result, recipe)
    if tracker is not None:
        tracker.finish(metrics=summary_metrics(result.summary),
                       artifacts=[root / "cv.json", root / "folds.csv"])
    return result


def _write_results(result: CVResult, recipe: Recipe) -> None:
    import csv

    root = result.out_dir
    atomic_write_json(root / "cv.json", {
        "folds": result.folds, "recipe": recipe.model_dump(mode="json"),
        "runs": [str(r) for r in result.runs], "per_fold": result.per_fold,
        "summary": result.summary})
    keys = list(result.summary)
    with atomic_writer(root / "folds.csv", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fold", *keys])
        for fold, headline in enumerate(result.per_fold):
            writer.writerow([fold, *(headline.get(k) for k in keys)])
        for stat in ("mean", "std"):
            writer.writerow([stat, *(result.summary[k][stat] for k in keys)])


def summary_metrics(summary: dict[str, dict[str, float]]) -> dict[str, float]:
    """`summarize_folds`' table as flat metrics: `accuracy_mean`, `accuracy_std`, ..."""
    return {metric_key(f"{name}_{stat}"): value for name, row in summary.items()
            for stat, value in row.items()}
