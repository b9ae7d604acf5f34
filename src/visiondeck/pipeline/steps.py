"""The seven steps of the pipeline, each a plain function over a `Context`.

Every step declares what its result depends on (`inputs`: a small JSON-able dict whose hash
decides whether it runs), does its work with the stage's own public function
(`check_data`, `prepare_split`, `train`/`resume`, `evaluate_run`, `export_run`, `register`,
`promote`) and returns an `Outcome`: the outputs later steps read (paths and content
hashes), and one line for the summary table. A step never reads another step's Python
objects, only its recorded outputs, so each can run in its own process (Airflow tasks).

| step | inputs hashed | outputs |
| --- | --- | --- |
| check | file list (path, label, size, mtime) of data.source/test_source, decode limits | catalog fingerprint |
| split | catalog fingerprint, seed, fractions, folds | split id |
| train | split id, the recipe's data/model/train sections | run folder, weights sha256 |
| evaluate | run folder, weights sha256 | metrics.json sha256, accuracy |
| export | run folder, weights and metrics sha256, int8 | Bundle folder and its digest |
| register | Bundle digest, model name, tracking store | model version |
| promote | model name and version | champion version |
"""  # noqa: E501

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visiondeck.config import Recipe
from visiondeck.pipeline.state import (
    PipelineError,
    PipelineState,
    StepRecord,
    hash_file,
    hash_json,
    hash_tree,
)

__all__ = ["STEPS", "STEP_NAMES", "Context", "Outcome", "Step"]

#: data keys that change how fast data is read, never what a model learns from it
_OPERATIONAL_DATA_KEYS = ("num_workers", "cache", "cache_max_gb")
#: the champion alias promote moves, and what export always adds
CHAMPION = "champion"
EXPORT_INT8 = True


@dataclass
class Context:
    """What a step may use: the resolved recipe, the recorded state, and the run's flags."""

    recipe: Recipe
    state: PipelineState
    force: bool = False
    progress: bool = True
    #: `--time`: train within this many seconds (probe + fit), see `train.budget`
    budget_s: float | None = None
    #: what `train.auto` chose and why, written beside a budgeted run (auto.json)
    notes: dict[str, Any] | None = None

    def upstream(self, name: str) -> dict[str, Any]:
        """The recorded outputs of a finished earlier step."""
        record = self.state.get(name)
        if record is None or not record.complete:
            raise PipelineError(f"step {name!r} has not finished for recipe "
                                f"{self.recipe.name!r}",
                                hint=f"run the pipeline from {name!r} (or without --only/--from)")
        return record.outputs

    def mark_running(self, name: str, input_hash: str, outputs: dict[str, Any]) -> None:
        """Record that a long step started (and where), so a killed run can be resumed."""
        self.state.record(StepRecord(name, "running", input_hash, outputs,
                                     key="started, never finished"))


@dataclass
class Outcome:
    status: str  # "ran" | "refused" | "off"
    outputs: dict[str, Any] = field(default_factory=dict)
    key: str = ""


@dataclass(frozen=True)
class Step:
    name: str
    doc: str
    inputs: Callable[[Context], dict[str, Any]]
    run: Callable[[Context, str], Outcome]  # (context, input hash) -> outcome
    outputs_exist: Callable[[dict[str, Any]], bool] = lambda outputs: True


def _log(message: str) -> None:
    import logging

    logging.getLogger("visiondeck.pipeline").info(message)


# ------------------------------------------------------------------------------- check


def _listing(spec: str | None) -> str | None:
    """Hash of a source's file list: what `scan` would re-read, from `stat` alone."""
    if not spec:
        return None
    from visiondeck.data.sources import open_source

    source = open_source(spec)
    rows = []
    for item in source.files():
        try:
            st = item.path.stat()
            rows.append((item.relpath, item.label, st.st_size, st.st_mtime_ns))
        except OSError:
            rows.append((item.relpath, item.label, -1, -1))
    manifest = None
    if source.manifest is not None:
        manifest = hash_file(source.manifest)
    return hash_json({"root": str(source.root), "manifest": manifest, "files": rows,
                      "unlabelled": source.unlabelled()})


def _check_inputs(ctx: Context) -> dict[str, Any]:
    cfg = ctx.recipe.data
    return {"source": _listing(cfg.source), "test_source": _listing(cfg.test_source),
            "min_size": cfg.min_size, "max_pixels": cfg.max_pixels, "prepared": cfg.prepared}


def _check(ctx: Context, _hash: str) -> Outcome:
    from visiondeck.data.catalog import decode_limits
    from visiondeck.data.prepare import check_data

    cfg = ctx.recipe.data
    result = check_data(cfg.source, prepared=cfg.prepared, limits=decode_limits(cfg),
                        workers=cfg.num_workers, progress=ctx.progress,
                        size_outliers=cfg.min_size is None)
    report = result.report
    fingerprint = hash_json(sorted((e.relpath, e.label, e.sha256, e.status.value)
                                   for e in result.catalog.entries))
    usable, problems = len(report.usable), len(report.problems)
    key = f"{usable} usable images, {len(report.classes)} classes"
    if problems:
        key += f", {problems} problem files left out"
    return Outcome("ran", {"prepared": str(result.prepared.resolve()),
                           "fingerprint": fingerprint, "usable": usable,
                           "problems": problems}, key)


def _check_exists(outputs: dict[str, Any]) -> bool:
    folder = Path(outputs.get("prepared", ""))
    return (folder / "catalog.jsonl").is_file() and (folder / "data_report.json").is_file()


# ------------------------------------------------------------------------------- split


def _split_inputs(ctx: Context) -> dict[str, Any]:
    cfg = ctx.recipe.data
    return {"catalog": ctx.upstream("check")["fingerprint"], "seed": cfg.seed,
            "val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction,
            "folds": cfg.folds, "test_source": cfg.test_source}


def _split(ctx: Context, _hash: str) -> Outcome:
    from visiondeck.data.prepare import prepare_split

    outcome = prepare_split(ctx.recipe.data, force=ctx.force, progress=ctx.progress)
    split = outcome.split
    counts = {s: sum(n.values()) for s, n in split.counts().items()}
    test_id = outcome.test_split.id if outcome.test_split is not None else None
    verb = "reused" if outcome.reused else "wrote"
    key = (f"{verb} split {split.id[:8]}: train {counts['train']}, val {counts['val']}, "
           f"test {counts['test']}")
    return Outcome("ran", {"prepared": str(outcome.check.prepared.resolve()),
                           "split_id": split.id, "test_split_id": test_id,
                           "counts": counts}, key)


def _split_exists(outputs: dict[str, Any]) -> bool:
    return (Path(outputs.get("prepared", "")) / "split.csv").is_file()


# ------------------------------------------------------------------------------- train


def _train_inputs(ctx: Context) -> dict[str, Any]:
    recipe = ctx.recipe
    if recipe.train.devices > 1 or recipe.train.num_nodes > 1:
        raise PipelineError(
            "the pipeline trains in one process; train.devices/num_nodes > 1 (DDP) relaunch "
            "the command once per process",
            hint="train with `visiondeck train RECIPE train.devices=N`, then evaluate, export "
                 "and register that run folder with their own commands",
        )
    split = ctx.upstream("split")
    data = recipe.data.model_dump(mode="json", exclude=set(_OPERATIONAL_DATA_KEYS))
    inputs = {"split": split["split_id"], "test_split": split.get("test_split_id"),
              "data": data, "model": recipe.model.model_dump(mode="json"),
              "train": recipe.train.model_dump(mode="json")}
    if ctx.budget_s is not None:  # the budget, not the epochs it buys on a given day
        inputs["time_budget_s"] = ctx.budget_s
    return inputs


def _resumable(record: StepRecord | None, input_hash: str) -> Path | None:
    """The run folder of a killed or failed training of these same inputs, if resumable."""
    import json

    if record is None or record.status not in ("running", "failed"):
        return None
    if record.input_hash != input_hash or not record.outputs.get("run_dir"):
        return None
    folder = Path(record.outputs["run_dir"])
    if not (folder / "checkpoints" / "last.ckpt").is_file():
        return None
    try:
        status = json.loads((folder / "run.json").read_text()).get("status")
    except (OSError, ValueError):
        return None
    return folder if status in ("running", "interrupted") else None


def _train(ctx: Context, input_hash: str) -> Outcome:
    from visiondeck.train.runner import new_run_dir, resume, train

    recipe = ctx.recipe
    folder = _resumable(ctx.state.get("train"), input_hash)
    resumed = folder is not None
    if folder is not None:
        _log(f"resuming the killed training in {folder}")
        result = resume(folder, progress=ctx.progress, tracker=_run_tracker(recipe, folder))
    else:
        folder = new_run_dir(recipe)
        ctx.mark_running("train", input_hash, {"run_dir": str(folder.resolve())})
        tracker = None
        if tracking_on(recipe):
            from visiondeck.registry.tracking import tracker_for

            tracker = tracker_for(recipe)
        if ctx.budget_s is not None:
            from visiondeck.train.budget import train_within

            result, _ = train_within(recipe, ctx.budget_s, run_dir=folder,
                                     progress=ctx.progress, tracker=tracker, notes=ctx.notes)
        else:
            result = train(recipe, run_dir=folder, progress=ctx.progress, tracker=tracker)
    weights = result.run_dir / "model" / "weights.safetensors"
    gate = result.gate
    key = f"{result.status}, {result.epochs_run} epochs"
    if "best_val_acc" in result.metrics:
        key += f", best val acc {result.metrics['best_val_acc']:.4f}"
    if resumed:
        key = "resumed: " + key
    return Outcome("ran", {
        "run_dir": str(result.run_dir.resolve()), "weights_sha256": hash_file(weights),
        "run_status": result.status, "resumed": resumed,
        "gate_passed": None if gate is None else gate.passed,
        "best_val_acc": result.metrics.get("best_val_acc"),
    }, key)


def _run_tracker(recipe: Recipe, folder: Path) -> Any:
    if not tracking_on(recipe):
        return None
    from visiondeck.registry.tracking import tracker_for_run

    return tracker_for_run(folder)


def _weights_unchanged(outputs: dict[str, Any]) -> bool:
    weights = Path(outputs.get("run_dir", "")) / "model" / "weights.safetensors"
    return weights.is_file() and hash_file(weights) == outputs.get("weights_sha256")


# ---------------------------------------------------------------------------- evaluate


def _evaluate_inputs(ctx: Context) -> dict[str, Any]:
    run = ctx.upstream("train")
    return {"run_dir": run["run_dir"], "weights": run["weights_sha256"], "split": "test"}


def _evaluate(ctx: Context, _hash: str) -> Outcome:
    from visiondeck.evaluate.core import evaluate_run

    run_dir = Path(ctx.upstream("train")["run_dir"])
    result = evaluate_run(run_dir, "test")
    metrics_json = result.out_dir / "metrics.json"
    if tracking_on(ctx.recipe) and (run_dir / "mlflow.json").is_file():
        from visiondeck.registry.runlog import log_evaluation

        log_evaluation(run_dir, metrics_json, result.report, artifacts_dir=result.out_dir)
    headline = result.headline
    accuracy, macro_f1 = headline.get("accuracy"), headline.get("macro_f1")
    key = f"test accuracy {accuracy:.4f}" if accuracy is not None else "evaluated"
    if macro_f1 is not None:
        key += f", macro F1 {macro_f1:.4f}"
    return Outcome("ran", {"metrics_json": str(metrics_json.resolve()),
                           "metrics_sha256": hash_file(metrics_json),
                           "report": str(result.report) if result.report else None,
                           "accuracy": accuracy, "macro_f1": macro_f1,
                           "n": result.metrics.get("n")}, key)


def _metrics_unchanged(outputs: dict[str, Any]) -> bool:
    path = Path(outputs.get("metrics_json", ""))
    return path.is_file() and hash_file(path) == outputs.get("metrics_sha256")


# ------------------------------------------------------------------------------ export


def _export_inputs(ctx: Context) -> dict[str, Any]:
    run, evaluation = ctx.upstream("train"), ctx.upstream("evaluate")
    return {"run_dir": run["run_dir"], "weights": run["weights_sha256"],
            "metrics": evaluation["metrics_sha256"], "int8": EXPORT_INT8}


def _export(ctx: Context, _hash: str) -> Outcome:
    from visiondeck.export.onnx_export import export_run

    run_dir = Path(ctx.upstream("train")["run_dir"])
    result = export_run(run_dir, int8=EXPORT_INT8, log=_log)
    if tracking_on(ctx.recipe) and (run_dir / "mlflow.json").is_file():
        from visiondeck.registry.runlog import log_bundle

        log_bundle(run_dir, result.path)
    sizes = {name: v.get("accuracy") for name, v in result.variants.items()}
    shown = ", ".join(f"{n} {a:.2%}" for n, a in sizes.items() if a is not None)
    return Outcome("ran", {"bundle": str(result.path.resolve()),
                           "digest": hash_tree(result.path),
                           "variants": sorted(result.variants)},
                   f"{result.path} ({shown})" if shown else str(result.path))


def _bundle_unchanged(outputs: dict[str, Any]) -> bool:
    folder = Path(outputs.get("bundle", ""))
    return (folder / "bundle.json").is_file() and hash_tree(folder) == outputs.get("digest")


# ---------------------------------------------------------------------------- register


def tracking_on(recipe: Recipe) -> bool:
    """Tracking as `tracker_for` decides it: enabled, and MLflow installed or a store named.

    With the embedded default and no MLflow, training warns and goes untracked; the registry
    steps follow suit ("off") instead of failing the pipeline.
    """
    if not recipe.tracking.enabled:
        return False
    if recipe.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI"):
        return True  # a named store without MLflow fails loudly in the step, as it should
    return importlib.util.find_spec("mlflow") is not None


def model_name(recipe: Recipe) -> str:
    """Registered model name: the recipe's name, so `models:/NAME@champion` reads naturally."""
    return recipe.name


def _register_inputs(ctx: Context) -> dict[str, Any]:
    recipe = ctx.recipe
    return {"bundle": ctx.upstream("export")["digest"], "name": model_name(recipe),
            "tracking": tracking_on(recipe), "uri": recipe.tracking.uri,
            "env_uri": os.environ.get("MLFLOW_TRACKING_URI")}


def _register(ctx: Context, _hash: str) -> Outcome:
    recipe = ctx.recipe
    if not tracking_on(recipe):
        return Outcome("off", {}, "tracking is off (tracking.enabled=false or no MLflow)")
    from visiondeck.registry.errors import RegistryRefusal
    from visiondeck.registry.models import register

    bundle = ctx.upstream("export")["bundle"]
    try:
        reg = register(bundle, model_name(recipe), tracking_uri=recipe.tracking.uri,
                       runs_root=recipe.output_dir)
    except RegistryRefusal as exc:
        return Outcome("refused", {"reason": exc.message}, f"not registered: {exc.message}")
    return Outcome("ran", {"name": reg.name, "version": reg.version, "run_id": reg.run_id,
                           "store": reg.store}, f"{reg.name} version {reg.version}")


# ----------------------------------------------------------------------------- promote


def _promote_inputs(ctx: Context) -> dict[str, Any]:
    reg = ctx.upstream("register")
    return {"name": reg.get("name"), "version": reg.get("version"), "alias": CHAMPION,
            "uri": ctx.recipe.tracking.uri}


def _promote(ctx: Context, _hash: str) -> Outcome:
    reg = ctx.upstream("register")
    if not tracking_on(ctx.recipe):
        return Outcome("off", {}, "tracking is off")
    if not reg.get("version"):
        return Outcome("off", {}, "nothing registered to promote")
    from visiondeck.registry.errors import RegistryRefusal
    from visiondeck.registry.models import promote

    recipe = ctx.recipe
    try:
        done = promote(reg["name"], reg["version"], alias=CHAMPION,
                       tracking_uri=recipe.tracking.uri, runs_root=recipe.output_dir)
    except RegistryRefusal as exc:
        return Outcome("refused", {"promoted": False, "reason": exc.message},
                       f"kept champion: {exc.message}")
    key = f"{CHAMPION} → version {done.version}"
    if done.previous is None or done.previous == done.version:
        key += " (first champion)" if done.previous is None else " (already champion)"
    elif done.metric is not None:
        key += (f" (was {done.previous}; {done.metric} {done.value:.4f} vs "
                f"{done.previous_value:.4f})")
    return Outcome("ran", {"promoted": True, "champion": done.version,
                           "previous": done.previous}, key)


STEPS: tuple[Step, ...] = (
    Step("check", "decode and validate every file", _check_inputs, _check, _check_exists),
    Step("split", "stratified train/val/test split", _split_inputs, _split, _split_exists),
    Step("train", "train the recipe (resumes a killed run)", _train_inputs, _train,
         _weights_unchanged),
    Step("evaluate", "test metrics, calibration, report", _evaluate_inputs, _evaluate,
         _metrics_unchanged),
    Step("export", "Bundle: ONNX + INT8, parity-checked", _export_inputs, _export,
         _bundle_unchanged),
    Step("register", "model version in the registry", _register_inputs, _register),
    Step("promote", f"{CHAMPION} alias if not worse", _promote_inputs, _promote),
)
STEP_NAMES: tuple[str, ...] = tuple(step.name for step in STEPS)
