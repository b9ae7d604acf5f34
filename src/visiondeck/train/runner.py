"""`train(recipe)`: from a recipe to a run folder with checkpoints, history and a verdict.

A run folder (`runs/NAME/`) holds everything needed to understand and continue it: the
resolved recipe, the split it used (id and location), classes.json, checkpoints (last and
best, written atomically every epoch), history.csv/json, TensorBoard logs and run.json (status,
metrics, the quality gate's verdict, class weights, versions, git commit, timings).
`resume(run_dir)` continues a killed run from its last checkpoint with optimiser, scheduler,
loop and RNG state.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visiondeck._files import atomic_write_json, atomic_write_text, remove_stale_temporaries
from visiondeck.config import Recipe, load_recipe, save_recipe
from visiondeck.errors import ConfigError, VisionDeckError

if TYPE_CHECKING:
    from visiondeck.train.tracking import Tracker

__all__ = ["GateResult", "RunResult", "TrainingError", "resume", "train"]


class TrainingError(VisionDeckError):
    exit_code = 5


@dataclass(frozen=True)
class GateResult:
    metric: str
    threshold: float
    value: float | None

    @property
    def passed(self) -> bool:
        return self.value is not None and self.value >= self.threshold


@dataclass
class RunResult:
    run_dir: Path
    status: str  # "passed" | "failed_gate" | "completed" (no gate)
    metrics: dict[str, float]
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    epochs_run: int
    duration_s: float
    gate: GateResult | None = None
    class_weights: list[float] | None = None
    skipped_files: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def new_run_dir(recipe: Recipe) -> Path:
    """runs/NAME, or runs/NAME-2, -3... so an earlier run is never overwritten."""
    base = Path(recipe.output_dir) / recipe.name
    candidate, n = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = base.with_name(f"{recipe.name}-{n}")
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


_RUN_DIR_ENV = "VISIONDECK_RUN_DIR"


def _rank_zero() -> bool:
    """Global rank zero: torchrun sets RANK on every process; Lightning's launcher does not."""
    if "RANK" in os.environ:
        return os.environ["RANK"] == "0"
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _torchrun_marker(recipe: Recipe) -> Path | None:
    """Where rank zero names the run folder for ranks torchrun started beside it.

    The name holds what identifies one launch (rendezvous id, restart count, master
    address), so a marker left by an earlier launch is never taken for this one.
    """
    env = os.environ
    if "TORCHELASTIC_RUN_ID" not in env or "RANK" not in env:
        return None
    launch = "|".join(env.get(k, "") for k in ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
                                               "MASTER_ADDR", "MASTER_PORT"))
    digest = hashlib.sha256(launch.encode()).hexdigest()[:16]
    return Path(recipe.output_dir) / f".{recipe.name}.{digest}.run-dir"


def _await_marker(marker: Path, timeout_s: float = 300.0) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if marker.exists():
            text = marker.read_text().strip()
            if text:
                return Path(text)
        time.sleep(0.05)
    raise TrainingError(f"rank zero did not name a run folder within {timeout_s:.0f} s "
                        f"(waited for {marker})",
                        hint="every node must see the same output_dir (a shared file system)")


def _shared_run_dir(recipe: Recipe, run_dir: str | os.PathLike[str] | None,
                    marker: Path | None) -> Path:
    """One run folder for all DDP processes.

    Lightning's DDP launcher starts the other ranks by re-running the command, so each would
    pick its own fresh `runs/NAME-k`; rank zero publishes its choice in the environment the
    children inherit. torchrun starts all ranks itself, side by side: there rank zero writes
    its choice to a marker file in `output_dir` (shared by the nodes) and the others wait
    for it.
    """
    if run_dir is not None:
        folder = Path(run_dir)
    elif not _rank_zero() and os.environ.get(_RUN_DIR_ENV):
        folder = Path(os.environ[_RUN_DIR_ENV])
    elif not _rank_zero() and marker is not None:
        folder = _await_marker(marker)
    else:
        folder = new_run_dir(recipe)
        if marker is not None:  # written whole: the waiting ranks never read half a path
            atomic_write_text(marker, str(folder.resolve()))
    folder.mkdir(parents=True, exist_ok=True)
    if _rank_zero():
        os.environ[_RUN_DIR_ENV] = str(folder.resolve())
    return folder


def train(recipe: Recipe, *, run_dir: str | os.PathLike[str] | None = None,
          progress: bool = True, callbacks: list | None = None,
          max_steps: int | None = None, tracker: Tracker | None = None,
          force: bool = False, split: Any = None) -> RunResult:
    """Train a recipe into a new run folder (or `run_dir`).

    `tracker` (see `train.tracking`) receives params at the start, metrics every epoch and
    the verdict at the end; the CLI passes the MLflow tracker of `visiondeck.registry`.
    `force` accepts a new split when the data or the split settings changed; `split` (a
    `SplitOutcome` of `prepare_split` for this recipe's data) skips checking the data again.

    A run that fails before its training starts (a split clash, unreadable data) leaves no
    folder behind, so the next run takes the same name instead of NAME-2.
    """
    marker = _torchrun_marker(recipe) if run_dir is None else None
    folder = _shared_run_dir(recipe, run_dir, marker)
    fresh = _rank_zero() and not any(folder.iterdir())
    if _rank_zero():
        save_recipe(recipe, folder / "recipe.yaml")
    try:
        return _fit(recipe, folder, ckpt_path=None, progress=progress, callbacks=callbacks,
                    max_steps=max_steps, tracker=tracker, force=force, split=split)
    except BaseException:
        if fresh and not (folder / "run.json").exists():  # run.json: training had begun
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        if marker is not None and _rank_zero():  # every rank has read it by now
            marker.unlink(missing_ok=True)


def resume(run_dir: str | os.PathLike[str], *, progress: bool = True,
           callbacks: list | None = None, tracker: Tracker | None = None) -> RunResult:
    """Continue a run from its last checkpoint; a finished run is reported, not retrained."""
    folder = Path(run_dir)
    recipe_file = folder / "recipe.yaml"
    if not recipe_file.exists():
        raise TrainingError(f"{folder} is not a run folder (no recipe.yaml)",
                            hint="give the folder `visiondeck train` printed, e.g. runs/NAME")
    finished = _finished_run(folder)
    if finished is not None:  # nothing to continue: every file and the tracked run stay as is
        return finished
    last = folder / "checkpoints" / "last.ckpt"
    if not last.exists():
        raise TrainingError(f"{folder} has no checkpoint to resume from",
                            hint="the run stopped before its first epoch ended; start it again")
    recipe = load_recipe(recipe_file)
    from visiondeck.train.guard import resume_callbacks

    # a budgeted run goes on re-planning from its own time left (its guard's state)
    callbacks = [*(callbacks or []), *resume_callbacks(last, callbacks)]
    return _fit(recipe, folder, ckpt_path=last, progress=progress, callbacks=callbacks,
                tracker=tracker)


#: run.json statuses written once training has ended (see `_fit`)
FINISHED_STATUSES = ("passed", "failed_gate", "completed")


def _finished_run(folder: Path) -> RunResult | None:
    """The recorded outcome of a run that already finished, read from its run.json.

    Resuming such a run through Lightning would restore the last checkpoint, run no epoch
    and then rewrite run.json (and the tracked run) from the few metrics a loop that never
    ran still holds; reporting what was recorded changes nothing.
    """
    try:
        info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("status") not in FINISHED_STATUSES:
        return None
    gate = info.get("gate") or None
    last = folder / "checkpoints" / "last.ckpt"
    best = info.get("best_checkpoint")
    return RunResult(
        folder, str(info["status"]), dict(info.get("metrics") or {}),
        Path(best) if best else None, last if last.exists() else None,
        int(info.get("epochs_run") or 0), float(info.get("duration_s") or 0.0),
        GateResult(gate["metric"], gate["threshold"], gate["value"]) if gate else None,
        info.get("class_weights"), int(info.get("skipped_files") or 0),
        {**{k: info[k] for k in ("split_id", "in_memory", "decode_failures") if k in info},
         "already_finished": True},
    )


@dataclass
class BuiltSystem:
    data: Any  # SplitDataModule
    system: Any  # Classifier
    split: Any  # Split
    spec: Any  # PrepareSpec
    class_weights: list[float]
    prepared: Path | None = None  # folder holding split.json
    test_prepared: Path | None = None  # folder of data.test_source's split.json, if any


def build_system(recipe: Recipe, folder: Path, *, progress: bool = True,
                 force: bool = False, split: Any = None) -> BuiltSystem:
    """Split, data module and Lightning system for a recipe (shared by train and find_lr);
    `force` accepts a new split of changed data or split settings; `split`: the outcome of
    a `prepare_split` of this recipe's data made just before (not checked again)."""
    import lightning as L
    import torch

    from visiondeck.data.prepare import prepare_split
    from visiondeck.models import from_config, model_spec
    from visiondeck.train.datamodule import SplitDataModule, resolve_spec
    from visiondeck.train.losses import class_weights, label_pos_weights
    from visiondeck.train.module import Classifier

    L.seed_everything(recipe.train.seed, workers=True, verbose=False)
    outcome = split or prepare_split(recipe.data, progress=progress, force=force)
    split = outcome.split
    atomic_write_json(folder / "classes.json", split.classes)
    spec_info = model_spec(recipe.model.name)
    spec = resolve_spec(recipe.data, spec_info.mean if recipe.model.pretrained else None,
                        spec_info.std if recipe.model.pretrained else None)
    data = SplitDataModule(split, recipe.data, recipe.train, spec,
                           cache_dir=outcome.check.prepared / "cache",
                           test_split=outcome.test_split, progress=progress)
    # multi-label: per-label n_neg/n_pos of the training files (recorded as class_weights)
    weights = (label_pos_weights(data.train_labels) if split.multilabel
               else class_weights(data.train_labels, len(split.classes)))
    model = from_config(recipe.model, num_classes=len(split.classes),
                        in_chans=recipe.data.channels)
    if recipe.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    system = Classifier(model, len(split.classes), recipe.train, class_weights=weights,
                        train_transform=data.device_transform(train=True),
                        eval_transform=data.device_transform(train=False),
                        multilabel=split.multilabel)
    test_prepared = (outcome.check.prepared / "test_source") if outcome.test_split else None
    return BuiltSystem(data, system, split, spec, weights,
                       outcome.check.prepared.resolve(),
                       test_prepared.resolve() if test_prepared else None)


def _fit(recipe: Recipe, folder: Path, *, ckpt_path: Path | None, progress: bool,
         callbacks: list | None, max_steps: int | None = None,
         tracker: Tracker | None = None, force: bool = False,
         split: Any = None) -> RunResult:
    from visiondeck.train.tracking import TrackerCallback
    from visiondeck.train.trainer import build_trainer

    started = time.perf_counter()
    if _rank_zero():  # a killed run's half-written checkpoint or record: never read, removed
        remove_stale_temporaries(folder)
    built = build_system(recipe, folder, progress=progress, force=force, split=split)
    data, system, split, spec, weights = (built.data, built.system, built.split, built.spec,
                                          built.class_weights)
    _check_gate_metric(recipe, system.monitor, split.multilabel)
    extra = list(callbacks or [])
    if tracker is not None:
        extra.append(TrackerCallback(tracker))
    trainer = build_trainer(recipe.train, folder, progress=progress,
                            extra_callbacks=extra, max_steps=max_steps, monitor=system.monitor)
    split_ref = {"id": split.id, "root": str(split.root), "classes": split.classes,
                 "prepared": str(built.prepared) if built.prepared else None,
                 "test_prepared": str(built.test_prepared) if built.test_prepared else None}
    if _rank_zero():
        _write_run_json(folder, recipe, split_ref, spec, weights, status="running")
    if tracker is not None:
        tracker.start(folder, recipe, resumed=ckpt_path is not None)
    try:
        trainer.fit(system, datamodule=data, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except BaseException:
        _write_run_json(folder, recipe, split_ref, spec, weights, status="interrupted")
        if tracker is not None:
            tracker.finish(folder, "interrupted", {})
        raise
    metrics = {k: round(v, 6) for k, v in _final_metrics(trainer).items()}
    checkpoint = trainer.checkpoint_callback
    best = Path(checkpoint.best_model_path) if checkpoint and checkpoint.best_model_path else None
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics[f"best_{system.monitor}"] = round(float(checkpoint.best_model_score), 6)
    if not trainer.is_global_zero:  # rank zero alone writes the run's outcome
        return RunResult(folder, "worker", metrics, best, None, trainer.current_epoch,
                         time.perf_counter() - started)
    _save_best_model(folder, system, best, recipe, spec, split.classes,
                     task=split.task)
    gate = _gate(recipe, metrics)
    status = "completed" if gate is None else ("passed" if gate.passed else "failed_gate")
    result = RunResult(
        folder, status, metrics, best, folder / "checkpoints" / "last.ckpt",
        trainer.current_epoch, time.perf_counter() - started, gate, weights,
        int(metrics.get("skipped_files", 0)) + len(data.decode_failures),
        {"split_id": split.id, "in_memory": data.in_memory,
         "decode_failures": data.decode_failures[:50]},
    )
    _write_run_json(folder, recipe, split_ref, spec, weights, status=status, result=result)
    if tracker is not None:
        tracker.finish(folder, status, metrics)
    return result


def _final_metrics(trainer) -> dict[str, float]:
    """The last epoch's metrics; from the checkpoint when the fit had no epoch left to run
    (a run killed after its last checkpoint, then resumed: see `EpochMetrics`)."""
    import torch

    from visiondeck.train.callbacks import EpochMetrics

    for callback in trainer.callbacks:
        if isinstance(callback, EpochMetrics):
            return callback.current()
    return {k: float(v) for k, v in trainer.callback_metrics.items()
            if torch.as_tensor(v).numel() == 1}


def _save_best_model(folder: Path, system, best: Path | None, recipe: Recipe, spec,
                     classes: list[str], task: str = "single") -> None:
    """The best epoch's network as safetensors + model.json (see `train.artifacts`)."""
    import torch

    from visiondeck.train.artifacts import save_trained

    model = system.model
    if best is not None and best.exists():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        own = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        model.load_state_dict(own)
    save_trained(folder, model, recipe=recipe, spec=spec, classes=list(classes),
                 extra={"task": task} if task != "single" else None)


def _check_gate_metric(recipe: Recipe, monitor: str, multilabel: bool) -> None:
    """A gate on a metric this task never logs would fail every run with no value, after
    all its training: refused before the first batch instead."""
    if recipe.train.min_val_accuracy is None or not multilabel:
        return
    if recipe.train.gate_metric in ("val_acc", "acc"):
        raise ConfigError(
            "multi-label runs log no val_acc for train.min_val_accuracy to gate on",
            hint=f"add train.gate_metric={monitor} (validation mAP), or val_f1")


def _gate(recipe: Recipe, metrics: dict[str, float]) -> GateResult | None:
    threshold = recipe.train.min_val_accuracy
    if threshold is None:
        return None
    name = recipe.train.gate_metric
    value = metrics.get(f"best_{name}", metrics.get(name))
    return GateResult(name, threshold, value)


def _write_run_json(folder: Path, recipe: Recipe, split_ref: dict[str, Any], spec, weights, *,
                    status: str,
                    result: RunResult | None = None) -> None:
    info: dict[str, Any] = {
        "name": recipe.name,
        "status": status,
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        "split": split_ref,
        "prepare": asdict(spec),
        "class_weights": weights,
        "balance": recipe.train.balance,
        "versions": _versions(),
        "git_commit": _git_commit(),
        "host": platform.node(),
    }
    if result is not None:
        info.update({
            "metrics": result.metrics,
            "epochs_run": result.epochs_run,
            "duration_s": round(result.duration_s, 2),
            "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
            "gate": (asdict(result.gate) | {"passed": result.gate.passed}) if result.gate
            else None,
            "skipped_files": result.skipped_files,
            **result.extra,
        })
    atomic_write_json(folder / "run.json", info)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("visiondeck", "torch", "torchvision", "lightning", "timm"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None
