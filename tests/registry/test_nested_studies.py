"""Ablations and cross-validations as MLflow runs: a parent per study, a nested run per cell.

Real training (1 epoch of a tiny CNN on 16 px images), real embedded store; what is checked
is what a reader of the MLflow UI or `visiondeck runs list` relies on: the parent's
definition, summary and files, each child's parentRunId, overrides, per-epoch and test
metrics, and that resuming a study adds no duplicate runs or metric points.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.factories import loaded_after_import, write_learnable
from typer.testing import CliRunner

from visiondeck.registry.store import read_link

TINY = ["data.image_size=16", "data.channels=3", "data.augment=none", "data.cache=memory",
        "data.num_workers=1", "data.val_fraction=0.25", "data.test_fraction=0.25",
        "model.name=simple_cnn", "train.epochs=1", "train.batch_size=16", "train.lr=0.01"]
FAST_EVAL = {"report": False, "n_boot": 20}


@pytest.fixture
def study_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from visiondeck.config import load_recipe

    monkeypatch.chdir(tmp_path)
    data = write_learnable(tmp_path / "images", per_class=12)

    def make(name: str, *extra: str):
        return load_recipe(None, [f"data.source={data}", *TINY,
                                  f"output_dir={tmp_path / 'runs'}", f"name={name}", *extra])

    return make


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _children(client, parent_id: str, experiment_id: str) -> list:
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    return sorted(runs, key=lambda r: r.info.run_name)


def test_ablation_is_a_parent_run_with_a_nested_run_per_cell(study_recipe, tmp_path) -> None:
    from visiondeck.evaluate.ablate import ablate
    from visiondeck.registry.study import study_tracker_for

    recipe = study_recipe("abl")
    tracker = study_tracker_for(recipe)
    assert tracker is not None
    out = tmp_path / "study"
    result = ablate(recipe, {"train.loss": ["ce", "focal"]}, out_dir=out, evaluate=FAST_EVAL,
                    tracker=tracker)
    link = read_link(out)
    assert link is not None and link.run_id == tracker.run_id
    assert link.tracking_uri.endswith(str(tmp_path / "runs" / "mlruns" / "mlflow.db"))
    client = _client(link.tracking_uri)
    parent = client.get_run(link.run_id)
    # the parent: the study's definition, its summary, its files
    assert parent.info.status == "FINISHED" and parent.info.run_name == "study"
    assert parent.data.tags["visiondeck.kind"] == "ablation"
    assert "mlflow.parentRunId" not in parent.data.tags
    params = parent.data.params
    assert json.loads(params["vary.train.loss"]) == ["ce", "focal"]
    assert params["design"] == "grid" and params["metric"] == "accuracy"
    assert params["seeds"] == "[0]" and params["cells"] == "2"
    assert params["recipe.train.epochs"] == "1" and params["recipe.name"] == "abl"
    metrics = parent.data.metrics
    rows = {row["train.loss"]: row["mean"] for row in result.table}
    assert metrics["accuracy_mean.loss-ce"] == pytest.approx(rows["ce"])
    assert metrics["accuracy_mean.loss-focal"] == pytest.approx(rows["focal"])
    assert metrics["effect.train.loss.ce"] == 0.0
    assert metrics["effect.train.loss.focal"] == pytest.approx(rows["focal"] - rows["ce"])
    files = {a.path for a in client.list_artifacts(link.run_id, "study")}
    assert files == {"study/results.json", "study/table.csv", "study/effects.png"}
    # one child per cell, nested, carrying its override and its metrics
    children = _children(client, link.run_id, parent.info.experiment_id)
    assert len(children) == 2
    by_loss = {c.data.params["cell.train.loss"]: c for c in children}
    assert set(by_loss) == {"ce", "focal"}
    for loss, child in by_loss.items():
        cell = next(c for c in result.cells if c.factors["train.loss"] == loss)
        assert child.info.status == "FINISHED"
        assert child.info.experiment_id == parent.info.experiment_id
        assert child.data.tags["mlflow.parentRunId"] == link.run_id
        assert child.data.tags["visiondeck.kind"] == "ablation-cell"
        assert child.data.params["train.loss"] == loss and child.data.params["cell.seed"] == "0"
        assert read_link(cell.run_dir).run_id == child.info.run_id
        # per-epoch metrics arrived through the trainer's Tracker seam, at step = epoch
        history = client.get_metric_history(child.info.run_id, "val_acc")
        assert [m.step for m in history] == [1]
        assert child.data.metrics["test_accuracy"] == pytest.approx(cell.headline["accuracy"])
    # `visiondeck ablate` resuming the finished study (the CLI passes MLflow's tracker)
    # reuses every cell: same runs, no doubled metric points
    from visiondeck.cli import app
    from visiondeck.config import save_recipe

    save_recipe(recipe, tmp_path / "recipe.yaml")
    runner = CliRunner()
    again = runner.invoke(app, ["ablate", str(tmp_path / "recipe.yaml"), "--vary",
                                "train.loss=ce,focal", "--out", str(out)],
                          env={"COLUMNS": "200"})
    assert again.exit_code == 0, again.output
    assert f"tracked as MLflow run {link.run_id}" in again.output
    assert read_link(out).run_id == link.run_id
    assert len(_children(client, link.run_id, parent.info.experiment_id)) == 2
    for child in children:
        assert len(client.get_metric_history(child.info.run_id, "test_accuracy")) == 1
    assert client.get_run(link.run_id).info.status == "FINISHED"
    # `visiondeck runs list`: the cells right under their parent, or folded away
    shown = runner.invoke(app, ["runs", "list", "--runs-dir", str(tmp_path / "runs")],
                          env={"COLUMNS": "220"})
    assert shown.exit_code == 0, shown.output
    lines = [line for line in shown.output.splitlines() if " study " in line or "↳" in line]
    assert " study " in lines[0] and "ablation" in lines[0]
    assert all("↳" in line and "ablation-cell" in line for line in lines[1:3]), shown.output
    folded = runner.invoke(app, ["runs", "list", "--no-nested", "--runs-dir",
                                 str(tmp_path / "runs")], env={"COLUMNS": "220"})
    assert folded.exit_code == 0 and "↳" not in folded.output
    assert "(+2 nested)" in folded.output


def test_cross_validation_is_a_parent_run_with_a_nested_run_per_fold(study_recipe,
                                                                     tmp_path) -> None:
    from visiondeck.evaluate.cv import cross_validate
    from visiondeck.registry.runs import list_runs
    from visiondeck.registry.store import open_store
    from visiondeck.registry.study import study_tracker_for

    recipe = study_recipe("cvtiny")
    out = tmp_path / "cv"
    result = cross_validate(recipe, 2, out_dir=out, evaluate=FAST_EVAL,
                            tracker=study_tracker_for(recipe))
    link = read_link(out)
    assert link is not None
    client = _client(link.tracking_uri)
    parent = client.get_run(link.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["visiondeck.kind"] == "cv"
    assert parent.data.params["folds"] == "2"
    assert parent.data.params["recipe.data.folds"] == "2"
    for stat in ("mean", "std", "min", "max"):
        assert parent.data.metrics[f"accuracy_{stat}"] == pytest.approx(
            result.summary["accuracy"][stat])
    files = {a.path for a in client.list_artifacts(link.run_id, "study")}
    assert files == {"study/cv.json", "study/folds.csv"}
    children = _children(client, link.run_id, parent.info.experiment_id)
    assert [c.info.run_name for c in children] == ["fold-0", "fold-1"]
    for fold, child in enumerate(children):
        assert child.data.tags["mlflow.parentRunId"] == link.run_id
        assert child.data.tags["visiondeck.kind"] == "cv-fold"
        assert child.data.params["cv.fold"] == str(fold)
        assert child.data.params["name"] == f"cvtiny-fold{fold}"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")] == [1]
        assert child.data.metrics["test_accuracy"] == pytest.approx(
            result.per_fold[fold]["accuracy"])
        assert child.info.status == "FINISHED"
    # list_runs puts the folds right after their parent, in the order they ran
    runs = list_runs(open_store(link.tracking_uri))
    names = [(r.name, r.depth) for r in runs]
    at = names.index(("cv", 0))
    assert names[at + 1:at + 3] == [("fold-0", 1), ("fold-1", 1)]
    assert runs[at].children == 2


def test_a_cell_reused_from_an_untracked_study_gets_its_nested_run_once(
        tmp_path: Path, scratch_uri: str) -> None:
    from visiondeck.config import TrackingConfig, load_recipe, save_recipe
    from visiondeck.registry.study import MlflowStudy

    study = MlflowStudy(TrackingConfig(uri=scratch_uri), tmp_path / "runs")
    folder = tmp_path / "study"
    study.start(folder, kind="ablation", name="reuse", params={"vary": {"train.lr": [1, 2]}})
    cell = folder / "cells" / "lr-1_s0"
    (cell / "evaluation").mkdir(parents=True)
    save_recipe(load_recipe(None, [f"tracking.uri={scratch_uri}"]), cell / "recipe.yaml")
    metrics = cell / "evaluation" / "metrics.json"
    metrics.write_text(json.dumps({"headline": {"accuracy": 0.75}}))
    params = {"cell.train.lr": "1", "cell.seed": "0"}
    study.child_done(cell, metrics, kind="ablation-cell", params=params)
    study.child_done(cell, metrics, kind="ablation-cell", params=params)  # resumed again
    study.finish(metrics={"accuracy_mean.lr-1": 0.75}, artifacts=[folder / "missing.json"])
    client = _client(scratch_uri)
    child = client.get_run(read_link(cell).run_id)
    assert child.data.tags["mlflow.parentRunId"] == study.run_id
    assert child.data.params["cell.train.lr"] == "1"
    assert child.info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(child.info.run_id, "test_accuracy")
            ] == [0.75]
    parent = client.get_run(study.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics == {"accuracy_mean.lr-1": 0.75}


def test_a_study_without_tracking_records_nothing(study_recipe) -> None:
    from visiondeck.registry.study import study_tracker_for

    assert study_tracker_for(study_recipe("off", "tracking.enabled=false")) is None


def test_studies_do_not_import_mlflow_or_the_registry() -> None:
    """MLflow lives in visiondeck.registry only: the studies take a tracker from the CLI."""
    assert loaded_after_import(
        ["visiondeck.evaluate.cv", "visiondeck.evaluate.ablate", "visiondeck.evaluate.tracking"],
        ["mlflow", "visiondeck.registry"]) == []
