"""Every training run as an MLflow run, through the trainer's `Tracker` seam.

`MlflowTracker` follows `visiondeck.train.tracking.Tracker`: training calls `start` (params =
the resolved recipe flattened, tags = data fingerprint, git commit, package versions),
`log_epoch` after each validated epoch, and `finish` (final metrics, verdict, the run's
files). The run folder then holds `mlflow.json` (a `store.RunLink`), and evaluation, export
and registration attach to that same MLflow run (see `registry.runlog`). `parent=` nests a
run under another one: the cells of an ablation, the folds of a cross-validation.

Tracking never costs a run: once the run has started, a store that fails is reported as a
`TrackingWarning` and training carries on; the run folder stays the source of truth.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from visiondeck.config import Recipe, TrackingConfig, load_recipe
from visiondeck.registry.errors import RegistryError, TrackingWarning
from visiondeck.registry.store import RunLink, Store, open_store, read_link, write_link

__all__ = ["MlflowTracker", "flatten", "log_batch", "read_json", "tracker_for",
           "tracker_for_run"]

TAG = "visiondeck."
RUN_ARTIFACTS = ("recipe.yaml", "classes.json", "history.csv", "history.json", "run.json")
_FINISHED = {"passed": "FINISHED", "completed": "FINISHED", "failed_gate": "FINISHED",
             "interrupted": "KILLED", "failed": "FAILED"}
_BATCH = 100  # MLflow accepts at most 100 params or tags per log_batch call


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """A nested mapping as dotted keys with string values (MLflow params are strings)."""
    out: dict[str, str] = {}
    if isinstance(value, Mapping):
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    key = prefix.removesuffix(".")
    out[key] = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)


def finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[str(key)] = number
    return out


def log_batch(store: Store, run_id: str, *, metrics: Mapping[str, float] | None = None,
               params: Mapping[str, str] | None = None, tags: Mapping[str, str] | None = None,
               step: int = 0) -> None:
    from mlflow.entities import Metric, Param, RunTag

    stamp = _now_ms()
    items_m = [Metric(k, v, stamp, step) for k, v in (metrics or {}).items()]
    items_p = [Param(k, v[:6000]) for k, v in (params or {}).items()]
    items_t = [RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()]
    for start in range(0, max(len(items_m), len(items_p), len(items_t), 1), _BATCH):
        store.client.log_batch(run_id, metrics=items_m[start:start + _BATCH],
                               params=items_p[start:start + _BATCH],
                               tags=items_t[start:start + _BATCH])


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _run_tags(run_dir: Path, kind: str) -> dict[str, str]:
    """Provenance tags from run.json: data fingerprint, git commit, package versions."""
    info = read_json(run_dir / "run.json")
    tags = {f"{TAG}kind": kind, f"{TAG}run_dir": str(run_dir.resolve())}
    split = info.get("split") or {}
    if split.get("id"):
        tags[f"{TAG}split_id"] = str(split["id"])
        tags[f"{TAG}data_fingerprint"] = str(split["id"])
    if split.get("classes"):
        tags[f"{TAG}classes"] = ",".join(map(str, split["classes"]))
    if info.get("git_commit"):
        tags["mlflow.source.git.commit"] = str(info["git_commit"])
    for package, version in (info.get("versions") or {}).items():
        tags[f"{TAG}version.{package}"] = str(version)
    try:
        from importlib.metadata import version

        tags[f"{TAG}version.mlflow"] = version("mlflow")
    except Exception:  # metadata of a vendored install can be missing; not worth failing
        pass
    if info.get("host"):
        tags[f"{TAG}host"] = str(info["host"])
    return tags


def _rank_zero() -> bool:
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _parent_run(parent: str | os.PathLike[str] | None) -> RunLink | str | None:
    if parent is None:
        return None
    link = read_link(parent) if Path(parent).is_dir() else None
    return link or str(parent)


class MlflowTracker:
    """The MLflow side of `visiondeck.train.tracking.Tracker`.

    `tracking` is the recipe's tracking section, `runs_root` the recipe's output_dir (the
    embedded store lives in `runs_root/mlruns`). `parent` (a folder opened with `open_run`,
    or an MLflow run id) makes this a nested run: an ablation cell or a CV fold. `params`
    are logged beside the recipe's (a cell's overrides, a fold's index), so a child run says
    what sets it apart from its siblings without diffing whole recipes.
    """

    def __init__(self, tracking: TrackingConfig | None = None,
                 runs_root: str | os.PathLike[str] = "runs", *,
                 parent: str | os.PathLike[str] | None = None, kind: str = "train",
                 tags: Mapping[str, str] | None = None,
                 params: Mapping[str, Any] | None = None) -> None:
        self.tracking = tracking or TrackingConfig()
        self.runs_root = Path(runs_root)
        self.kind = kind
        self.extra_tags = dict(tags or {})
        self.extra_params = flatten(dict(params or {}))
        self.parent = _parent_run(parent)
        self.run_id: str | None = None
        self.store: Store | None = None
        self._epoch_keys: set[str] = set()
        self._last_step = 0

    # -- Tracker protocol -------------------------------------------------------------

    def start(self, run_dir: Path, recipe: Any, *, resumed: bool) -> None:
        """Create the MLflow run (or re-open it on resume) and log params and tags.

        Raises `RegistryError` when the store cannot be reached: the user asked for
        tracking and should know before an hour of training, not after.
        """
        if not _rank_zero():  # DDP: the other processes train; rank zero alone tracks
            return
        experiment = self.tracking.experiment or getattr(recipe, "name", None)
        params = flatten(recipe.model_dump(mode="json")) if hasattr(recipe, "model_dump") \
            else flatten(recipe or {})
        self.begin(run_dir, experiment=experiment, params=params, resumed=resumed)

    def begin(self, run_dir: str | os.PathLike[str], *, experiment: str | None = None,
              params: Mapping[str, Any] | None = None, resumed: bool = False) -> str:
        """`start` for any folder: the MLflow run of `run_dir` (re-opened when `resumed`
        and the folder's link is alive), with `params`; returns the run id."""
        folder = Path(run_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._begin(folder, experiment or folder.name,
                        {**flatten(dict(params or {})), **self.extra_params}, resumed=resumed)
        except RegistryError:
            raise
        except Exception as exc:
            store = self.store.display if self.store else self.tracking.uri or "the store"
            raise RegistryError(f"cannot start tracking in {store}: {exc}",
                                hint="check the tracking server (MLFLOW_TRACKING_URI / "
                                     "tracking.uri), or set tracking.enabled=false") from exc
        assert self.run_id is not None
        return self.run_id

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Metrics of one epoch at step epoch+1 (history.csv counts epochs from 1)."""
        if self.run_id is None or self.store is None:
            return
        values = finite(metrics)
        step = int(epoch) + 1
        self._epoch_keys.update(values)
        self._last_step = max(self._last_step, step)
        self._guard("log epoch metrics", lambda: log_batch(self.store, self.run_id,
                                                             metrics=values, step=step))

    def finish(self, run_dir: Path, status: str, metrics: dict[str, float]) -> None:
        """Final metrics not already logged per epoch, the verdict, the run's files."""
        if self.run_id is None or self.store is None:
            return
        store, run_id, run_dir = self.store, self.run_id, Path(run_dir)
        final = {k: v for k, v in finite(metrics).items() if k not in self._epoch_keys}
        info = read_json(run_dir / "run.json")
        tags = {f"{TAG}status": status}
        gate = info.get("gate") or None
        if gate:
            tags.update({f"{TAG}gate.metric": str(gate.get("metric")),
                         f"{TAG}gate.threshold": str(gate.get("threshold")),
                         f"{TAG}gate.value": str(gate.get("value")),
                         f"{TAG}gate.passed": str(bool(gate.get("passed"))).lower()})
        self._guard("log final metrics", lambda: log_batch(
            store, run_id, metrics=final, tags=tags, step=self._last_step))
        self._guard("log run files", lambda: _log_files(store, run_id, run_dir))
        self._guard("close the run", lambda: store.client.set_terminated(
            run_id, _FINISHED.get(status, "FINISHED")))

    # -- internals ----------------------------------------------------------------------

    def _begin(self, run_dir: Path, experiment: str, params: dict[str, str], *,
               resumed: bool) -> None:
        link = read_link(run_dir)
        if resumed and link is not None:  # continue the run where it lives
            linked = link.store(self.tracking.uri)
            if linked.run_exists(link.run_id):
                self.store, self.run_id = linked, link.run_id
                self._epoch_keys = set(linked.client.get_run(link.run_id).data.metrics)
                linked.client.update_run(link.run_id, status="RUNNING")
                log_batch(linked, link.run_id, tags={f"{TAG}resumed": "true",
                                                     f"{TAG}status": "running"})
                return
        parent_link = self.parent if isinstance(self.parent, RunLink) else None
        store = parent_link.store(self.tracking.uri) if parent_link else open_store(
            self.tracking.uri, self.runs_root)
        self.store = store
        tags = {**_run_tags(run_dir, self.kind), f"{TAG}status": "running", **self.extra_tags}
        if parent_link is not None:
            experiment_id, experiment = parent_link.experiment_id, parent_link.experiment
            tags["mlflow.parentRunId"] = parent_link.run_id
        elif self.parent is not None:  # a bare run id: nest in its experiment
            parent = store.client.get_run(str(self.parent))
            experiment_id = parent.info.experiment_id
            experiment = store.client.get_experiment(experiment_id).name
            tags["mlflow.parentRunId"] = str(self.parent)
        else:
            experiment_id = store.experiment_id(experiment)
        run = store.client.create_run(experiment_id, run_name=run_dir.name, tags=tags)
        self.run_id = run.info.run_id
        log_batch(store, self.run_id, params=params)
        write_link(run_dir, tracking_uri=store.uri, run_id=self.run_id,
                   experiment_id=str(experiment_id), experiment=experiment)

    def _guard(self, what: str, action) -> None:
        try:
            action()
        except Exception as exc:  # the run goes on; the folder keeps the truth
            warnings.warn(f"MLflow: could not {what} for run {self.run_id}: {exc}",
                          TrackingWarning, stacklevel=3)


def _log_files(store: Store, run_id: str, run_dir: Path) -> None:
    for name in RUN_ARTIFACTS:
        if (run_dir / name).is_file():
            store.client.log_artifact(run_id, str(run_dir / name))
    if (run_dir / "model" / "model.json").is_file():
        store.client.log_artifact(run_id, str(run_dir / "model" / "model.json"), "model")


# --------------------------------------------------------------- choosing a tracker


def tracker_for(recipe: Recipe, *, parent: str | os.PathLike[str] | None = None,
                kind: str = "train") -> MlflowTracker | None:
    """The tracker a recipe asks for, or None when `tracking.enabled` is false.

    With the embedded default and MLflow not installed, tracking is skipped with a warning
    (a core install can still train); an explicit `tracking.uri` without MLflow is an error.
    """
    if not recipe.tracking.enabled:
        return None
    try:
        import mlflow  # noqa: F401
    except ImportError:
        if recipe.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI"):
            raise RegistryError("tracking is configured but MLflow is not installed",
                                hint="pip install 'visiondeck[track]'") from None
        warnings.warn("MLflow is not installed: this run is not tracked "
                      "(pip install 'visiondeck[track]', or set tracking.enabled=false)",
                      TrackingWarning, stacklevel=2)
        return None
    return MlflowTracker(recipe.tracking, recipe.output_dir, parent=parent, kind=kind)


def tracker_for_run(run_dir: str | os.PathLike[str]) -> MlflowTracker | None:
    """The tracker that continues a run folder (for `train --resume`)."""
    recipe_file = Path(run_dir) / "recipe.yaml"
    if not recipe_file.is_file():
        return None
    recipe = load_recipe(recipe_file)
    tracker = tracker_for(recipe)
    if tracker is not None:
        tracker.runs_root = Path(run_dir).resolve().parent
    return tracker


