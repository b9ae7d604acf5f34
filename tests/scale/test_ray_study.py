"""Studies on a real two-node Ray cluster on loopback: `ablate … --engine ray` and
`evaluate --cv K --engine ray`.

Real training (2 epochs of a tiny CNN on 16 px images, deterministic), a real embedded MLflow
store per engine. What is checked: the cells and folds give the metrics of the local run with
the same seeds; the MLflow parent and child runs are those of the local run; a task whose
process dies in the middle of training is retried, resumes its cell from the checkpoint under
the same child run, and the study completes; a rerun reuses what is on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.factories import write_learnable
from visiondeck.registry.store import read_link

TINY = ["data.image_size=16", "data.channels=3", "data.augment=none", "data.cache=memory",
        "data.num_workers=1", "data.val_fraction=0.25", "data.test_fraction=0.25",
        "model.name=simple_cnn", "train.epochs=2", "train.batch_size=16",
        "train.deterministic=true"]
FAST_EVAL = {"report": False, "n_boot": 20}
VARY = {"train.loss": ["ce", "focal"], "train.lr": ["0.01", "0.05"]}
CRASHING_CELL = "loss-focal_lr-0.05_s0"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_learnable(tmp_path_factory.mktemp("ray-study-data") / "images", per_class=12)


def _recipe(data: Path, home: Path, name: str, *extra: str):
    from visiondeck.config import load_recipe

    return load_recipe(None, [f"data.source={data}", f"data.prepared={home / 'prepared'}",
                              *TINY, f"output_dir={home / 'runs'}", f"name={name}", *extra])


class _CrashOnce:
    """A study tracker (MLflow's, wrapped) whose cell CRASHING_CELL kills its own process
    in the middle of training — after epoch 1 was checkpointed, as epoch 2 is logged — on
    its first attempt only (the marker file remembers the attempt across processes)."""

    def __init__(self, inner, marker: Path) -> None:
        self.inner, self.marker = inner, marker

    def start(self, folder, **kw) -> None:
        self.inner.start(folder, **kw)

    def child(self, run_dir, recipe, **kw):
        child = self.inner.child(run_dir, recipe, **kw)
        return _DieAtEpoch2(child, self.marker) if Path(run_dir).name == CRASHING_CELL \
            else child

    def child_done(self, run_dir, metrics_json, **kw) -> None:
        self.inner.child_done(run_dir, metrics_json, **kw)

    def finish(self, **kw) -> None:
        self.inner.finish(**kw)

    @property
    def run_id(self):
        return self.inner.run_id


class _DieAtEpoch2:
    def __init__(self, inner, marker: Path) -> None:
        self.inner, self.marker = inner, marker

    def start(self, run_dir, recipe, *, resumed: bool) -> None:
        self.inner.start(run_dir, recipe, resumed=resumed)

    def log_epoch(self, epoch: int, metrics: dict) -> None:
        if epoch == 1 and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(17)  # a worker lost mid-cell: nothing is cleaned up
        self.inner.log_epoch(epoch, metrics)

    def finish(self, run_dir, status, metrics) -> None:
        self.inner.finish(run_dir, status, metrics)


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Torch's thread count for a while: a 1-CPU Ray task trains with one thread (Ray sets
    OMP_NUM_THREADS), and the last bits of a float sum depend on how it was split."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _children(link) -> dict[str, object]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=link.tracking_uri)
    experiment = client.get_run(link.run_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{link.run_id}'")
    return {r.info.run_name: r for r in runs}


def _history(link, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=link.tracking_uri)
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def _child_view(link) -> dict[str, dict]:
    """What a reader of the MLflow UI sees of each child: overrides, status, metrics."""
    out = {}
    for name, run in _children(link).items():
        out[name] = {
            "status": run.info.status, "kind": run.data.tags["visiondeck.kind"],
            "params": {k: v for k, v in run.data.params.items()
                       if k.startswith(("cell.", "cv.", "train.loss", "train.lr"))},
            "val_acc": _history(link, run.info.run_id, "val_acc"),
            "test_accuracy": _history(link, run.info.run_id, "test_accuracy"),
        }
    return out


def test_ablation_on_ray_equals_local_survives_a_lost_worker_and_resumes(
        ray_cluster, data: Path, tmp_path: Path) -> None:
    import ray.cloudpickle

    from visiondeck.evaluate.ablate import ablate
    from visiondeck.registry.study import study_tracker_for
    from visiondeck.scale.ray_study import ablate_on_ray

    # the crashing tracker is defined here: ship this module's code by value to the workers
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

    local_home, ray_home = tmp_path / "local", tmp_path / "ray"
    local_recipe = _recipe(data, local_home, "abl")
    with _torch_threads(1):  # as in a 1-CPU Ray task
        local = ablate(local_recipe, VARY, out_dir=local_home / "study", evaluate=FAST_EVAL,
                       tracker=study_tracker_for(local_recipe))

    marker = tmp_path / "crashed-once"
    ray_recipe = _recipe(data, ray_home, "abl")
    tracker = _CrashOnce(study_tracker_for(ray_recipe), marker)
    on_ray = ablate_on_ray(ray_recipe, VARY, address=ray_cluster.address,
                           out_dir=ray_home / "study", evaluate=FAST_EVAL, tracker=tracker)

    # the crash happened, in a Ray worker (not here), and the study still completed
    assert marker.is_file() and int(marker.read_text()) != os.getpid()
    # the same metrics, cell by cell, as the local run with the same seeds
    assert [c.run_dir.name for c in on_ray.cells] == [c.run_dir.name for c in local.cells]
    assert len(on_ray.cells) == 4 and not any(c.reused for c in on_ray.cells)
    for mine, theirs in zip(on_ray.cells, local.cells, strict=True):
        assert (mine.factors, mine.seed) == (theirs.factors, theirs.seed)
        assert mine.headline == theirs.headline, mine.run_dir.name
    assert on_ray.table == local.table and on_ray.effects == local.effects
    crashed = ray_home / "study" / "cells" / CRASHING_CELL
    assert json.loads((crashed / "run.json").read_text())["epochs_run"] == 2

    # MLflow: one parent with a nested child per cell, as locally; the crashed cell's child
    # is the one run, resumed (its epoch 1 logged once, epoch 2 after the retry)
    ray_link, local_link = read_link(ray_home / "study"), read_link(local_home / "study")
    assert ray_link.run_id == tracker.run_id
    ray_children, local_children = _child_view(ray_link), _child_view(local_link)
    assert sorted(ray_children) == sorted(c.run_dir.name for c in local.cells)
    assert ray_children == local_children
    for cell in on_ray.cells:
        child = ray_children[cell.run_dir.name]
        assert child["status"] == "FINISHED" and child["kind"] == "ablation-cell"
        assert [step for step, _ in child["val_acc"]] == [1, 2]
        assert child["test_accuracy"] == [(0, pytest.approx(cell.headline["accuracy"]))]
        assert read_link(cell.run_dir).run_id == _children(ray_link)[cell.run_dir.name
                                                                     ].info.run_id
    resumed = _children(ray_link)[CRASHING_CELL].data.tags
    assert resumed.get("visiondeck.resumed") == "true"
    from mlflow import MlflowClient

    parent = MlflowClient(tracking_uri=ray_link.tracking_uri).get_run(ray_link.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["visiondeck.kind"] == "ablation"
    assert parent.data.params["cells"] == "4"

    # a rerun (the CLI) reads every evaluated cell back: nothing goes to the cluster (its
    # address here leads nowhere), no child run or metric point is added
    evaluated = {c.run_dir.name: (c.run_dir / "evaluation" / "metrics.json").stat().st_mtime_ns
                 for c in on_ray.cells}
    from visiondeck.cli import app
    from visiondeck.config import save_recipe

    save_recipe(ray_recipe, tmp_path / "recipe.yaml")
    again = CliRunner().invoke(app, [
        "ablate", str(tmp_path / "recipe.yaml"), "--vary", "train.loss=ce,focal",
        "--vary", "train.lr=0.01,0.05", "--out", str(ray_home / "study"), "--engine", "ray",
        "--address", "127.0.0.1:9"], env={"COLUMNS": "200"})
    assert again.exit_code == 0, again.output
    assert f"tracked as MLflow run {ray_link.run_id}" in again.output
    rerun = json.loads((ray_home / "study" / "results.json").read_text())
    assert [c["headline"] for c in rerun["cells"]] == [c.headline for c in local.cells]
    assert {c.run_dir.name: (c.run_dir / "evaluation" / "metrics.json").stat().st_mtime_ns
            for c in on_ray.cells} == evaluated
    assert _child_view(ray_link) == local_children


def test_cross_validation_on_ray_equals_local_and_resumes(ray_cluster, data: Path,
                                                         tmp_path: Path) -> None:
    """Cross-validation on Ray equals the local one; through `visiondeck evaluate RECIPE
    --cv 2 --engine ray`, a fold whose evaluation was lost is evaluated again (not
    retrained) on the cluster."""
    from visiondeck.cli import app
    from visiondeck.config import save_recipe
    from visiondeck.evaluate.cv import cross_validate
    from visiondeck.registry.study import study_tracker_for
    from visiondeck.scale.ray_study import cross_validate_on_ray

    local_home, ray_home = tmp_path / "local", tmp_path / "ray"
    recipes = {home: _recipe(data, home, "cvt", "train.epochs=1")
               for home in (local_home, ray_home)}
    with _torch_threads(1):  # as in a 1-CPU Ray task
        local = cross_validate(recipes[local_home], 2, out_dir=local_home / "cv",
                               evaluate=FAST_EVAL,
                               tracker=study_tracker_for(recipes[local_home]))
    # a Ray the caller started (one driver session for both runs, warm workers): the
    # executor uses it and leaves it running
    import ray

    ray.init(address=ray_cluster.address, logging_level="WARNING", log_to_driver=False)
    try:
        seen: list[int] = []
        on_ray = cross_validate_on_ray(recipes[ray_home], 2, address=ray_cluster.address,
                                       out_dir=ray_home / "cv", evaluate=FAST_EVAL,
                                       tracker=study_tracker_for(recipes[ray_home]),
                                       on_fold=lambda fold, _: seen.append(fold))
        assert sorted(seen) == [0, 1]
        assert on_ray.per_fold == local.per_fold
        assert on_ray.summary == local.summary
        ray_link, local_link = read_link(ray_home / "cv"), read_link(local_home / "cv")
        ray_children = _child_view(ray_link)
        assert sorted(ray_children) == ["fold-0", "fold-1"]
        assert ray_children == _child_view(local_link)
        for fold in (0, 1):
            assert ray_children[f"fold-{fold}"]["params"]["cv.fold"] == str(fold)
            assert ray_children[f"fold-{fold}"]["test_accuracy"] == [
                (0, pytest.approx(local.per_fold[fold]["accuracy"]))]

        # resume (the CLI): fold 1 lost its evaluation; its trained model stays, only it is
        # evaluated again, on the cluster
        lost = ray_home / "cv" / "fold-1"
        model = {p: p.stat().st_mtime_ns for p in (lost / "model").rglob("*") if p.is_file()}
        kept = (ray_home / "cv" / "fold-0" / "evaluation" / "metrics.json").stat().st_mtime_ns
        (lost / "evaluation" / "metrics.json").unlink()
        save_recipe(recipes[ray_home], tmp_path / "recipe.yaml")
        again = CliRunner().invoke(app, [
            "evaluate", str(tmp_path / "recipe.yaml"), "--cv", "2", "--out", str(ray_home / "cv"),
            "--engine", "ray", "--address", ray_cluster.address, "--cpus-per-task", "1",
            "--retries", "1"], env={"COLUMNS": "200"})
        assert again.exit_code == 0, again.output
        assert "fold 1/2" in again.output and "fold 2/2" in again.output
        assert json.loads((ray_home / "cv" / "cv.json").read_text())["per_fold"] == local.per_fold
        assert (lost / "evaluation" / "metrics.json").is_file()
        assert {p: p.stat().st_mtime_ns for p in model} == model
        assert (ray_home / "cv" / "fold-0" / "evaluation" / "metrics.json").stat(
            ).st_mtime_ns == kept
        assert _child_view(ray_link) == ray_children  # no child run or metric point added
        assert ray.is_initialized()
    finally:
        ray.shutdown()


def test_engine_ray_without_ray_says_how_to_install_it(data: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before anything starts: no split, no run folder, no tracked run."""
    from visiondeck.cli import app
    from visiondeck.config import save_recipe

    save_recipe(_recipe(data, tmp_path, "noray"), tmp_path / "recipe.yaml")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    recipe = str(tmp_path / "recipe.yaml")
    for command in (["ablate", recipe, "--vary", "train.loss=ce,focal", "--engine", "ray"],
                    ["evaluate", recipe, "--cv", "2", "--engine", "ray"]):
        result = CliRunner().invoke(app, command, env={"COLUMNS": "200"})
        assert result.exit_code != 0
        assert "pip install 'visiondeck[ray]'" in result.output, result.output
        assert not (tmp_path / "runs").exists() and not (tmp_path / "prepared").exists()
