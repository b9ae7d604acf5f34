"""Experiment tracking: the embedded store, what a training run logs, resume, nesting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from visiondeck.config import TrackingConfig, load_recipe
from visiondeck.registry.errors import TrackingWarning
from visiondeck.registry.store import read_link, resolve_tracking_uri
from visiondeck.registry.tracking import flatten


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_a_training_run_is_tracked_in_the_embedded_store(tracked) -> None:
    link = read_link(tracked.alpha)
    assert link is not None
    db = tracked.runs_root / "mlruns" / "mlflow.db"
    assert link.tracking_uri == f"sqlite:///{db.resolve()}" and db.is_file()
    client = _client(link.tracking_uri)
    run = client.get_run(link.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "alpha"
    assert client.get_experiment(run.info.experiment_id).name == "alpha"
    # params: the resolved recipe, flattened
    params = run.data.params
    assert params["train.epochs"] == "2" and params["model.name"] == "simple_cnn"
    assert params["train.lr"] == "0.01" and params["data.image_size"] == "16"
    recipe = load_recipe(tracked.alpha / "recipe.yaml")
    assert params == flatten(recipe.model_dump(mode="json"))
    # metrics per epoch, steps counted like history.csv
    history = json.loads((tracked.alpha / "history.json").read_text())
    steps = [(m.step, m.value) for m in client.get_metric_history(link.run_id, "val_acc")]
    assert [s for s, _ in sorted(steps)] == [1, 2]
    assert [v for _, v in sorted(steps)] == pytest.approx([row["val_acc"] for row in history])
    assert "best_val_acc" in run.data.metrics
    # tags: data fingerprint = the split id, versions, verdict and gate
    info = json.loads((tracked.alpha / "run.json").read_text())
    tags = run.data.tags
    assert tags["visiondeck.data_fingerprint"] == info["split"]["id"]
    assert tags["visiondeck.version.torch"] == info["versions"]["torch"]
    assert tags["visiondeck.status"] == info["status"] == "passed"
    assert tags["visiondeck.gate.passed"] == "true" and tags["visiondeck.kind"] == "train"
    if info.get("git_commit"):
        assert tags["mlflow.source.git.commit"] == info["git_commit"]
    # artifacts, stored beside the database (not in the working directory)
    names = {a.path for a in client.list_artifacts(link.run_id)}
    assert {"recipe.yaml", "classes.json", "history.csv", "run.json"} <= names
    stored = list((tracked.runs_root / "mlruns" / "artifacts").rglob("history.csv"))
    assert stored and not (tracked.runs_root.parent / "mlruns").exists()


def test_resume_continues_the_same_mlflow_run(tracked) -> None:
    assert tracked.beta_status_before_resume == "KILLED"  # the crash was recorded
    link = read_link(tracked.beta)
    assert link is not None and link.run_id == tracked.beta_run_before_resume
    client = _client(link.tracking_uri)
    run = client.get_run(link.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["visiondeck.resumed"] == "true"
    assert run.data.tags["visiondeck.status"] == "completed"
    steps = sorted(m.step for m in client.get_metric_history(link.run_id, "val_acc"))
    assert steps == [1, 2]  # epoch 1 before the crash, epoch 2 after the resume
    runs = client.search_runs([link.experiment_id])
    assert [r.info.run_id for r in runs] == [link.run_id]  # no second run for the resume


def test_the_tracking_uri_follows_recipe_then_environment_then_embedded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    embedded = f"sqlite:///{(tmp_path / 'runs' / 'mlruns' / 'mlflow.db').resolve()}"
    assert resolve_tracking_uri(None, tmp_path / "runs") == embedded
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert resolve_tracking_uri(None, tmp_path / "runs") == "http://tracking.example:5000"
    assert resolve_tracking_uri("http://recipe:5000", tmp_path) == "http://recipe:5000"
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///rel/x.db") == f"sqlite:///{tmp_path / 'rel/x.db'}"


def test_nested_runs_and_folder_logging(tmp_path: Path, scratch_uri: str) -> None:
    from visiondeck.registry.runlog import close_run, log_artifacts, log_metrics, open_run
    from visiondeck.registry.tracking import MlflowTracker

    uri = scratch_uri
    tracking = TrackingConfig(uri=uri)
    parent = tmp_path / "ablation"
    parent_id = open_run(parent, name="ablation-lr", tracking=tracking, kind="ablation",
                         params={"grid": {"train.lr": [0.1, 0.01]}})
    assert parent_id and read_link(parent).run_id == parent_id
    assert open_run(parent, tracking=tracking) == parent_id  # re-attaches, no duplicate
    children = []
    for lr in (0.1, 0.01):
        child = MlflowTracker(tracking, tmp_path, parent=parent, kind="cell")
        children.append(child.begin(tmp_path / "ablation" / f"lr-{lr}",
                                    params={"train": {"lr": lr}}))
    (parent / "summary.csv").write_text("lr,acc\n0.1,0.5\n0.01,0.7\n")
    assert log_metrics(parent, {"best_acc": 0.7, "bad": float("nan")}) == parent_id
    assert log_artifacts(parent, [parent / "summary.csv"]) == parent_id
    assert close_run(parent) == parent_id
    client = _client(uri)
    parent_run = client.get_run(parent_id)
    assert parent_run.info.status == "FINISHED"
    assert parent_run.data.metrics == {"best_acc": 0.7}
    assert parent_run.data.params["grid.train.lr"] == "[0.1, 0.01]"
    for run_id in children:
        child_run = client.get_run(run_id)
        assert child_run.data.tags["mlflow.parentRunId"] == parent_id
        assert child_run.info.experiment_id == parent_run.info.experiment_id
    assert {a.path for a in client.list_artifacts(parent_id)} == {"summary.csv"}
    # tracking disabled: nothing is opened, nothing is written
    assert open_run(tmp_path / "off", tracking=TrackingConfig(enabled=False)) is None
    assert not (tmp_path / "off").exists()


def test_a_failing_store_warns_and_the_run_goes_on(tmp_path: Path, scratch_uri: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from visiondeck.registry.tracking import MlflowTracker

    tracker = MlflowTracker(TrackingConfig(uri=scratch_uri), tmp_path)
    run_id = tracker.begin(tmp_path / "run", experiment="e")
    tracker.log_epoch(0, {"val_acc": 0.5})

    def broken(*args, **kwargs):
        raise ConnectionError("tracking server went away")

    with monkeypatch.context() as patch:
        patch.setattr(tracker.store.client, "log_batch", broken)
        with pytest.warns(TrackingWarning, match="went away"):
            tracker.log_epoch(1, {"val_acc": 0.6})
        with pytest.warns(TrackingWarning):
            tracker.finish(tmp_path / "run", "completed", {"val_acc": 0.6})
    assert [m.value for m in _client(tracker.store.uri).get_metric_history(run_id, "val_acc")] \
        == [0.5]


def test_an_unreachable_store_stops_a_run_before_it_starts(tmp_path: Path) -> None:
    from visiondeck.registry.errors import RegistryError
    from visiondeck.registry.tracking import MlflowTracker

    (tmp_path / "file").write_text("not a folder")
    tracker = MlflowTracker(TrackingConfig(uri=f"sqlite:///{tmp_path / 'file' / 'x.db'}"))
    with pytest.raises(RegistryError, match=r"cannot start tracking|File exists|Not a dir"):
        tracker.begin(tmp_path / "run")


def test_evaluation_and_bundle_attach_to_the_training_run(tracked, bundles, tmp_path) -> None:
    from visiondeck.registry.runlog import bundle_digest, log_bundle, log_evaluation

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"headline": {"accuracy": 0.875, "macro_f1": 0.86},
                                   "per_class": {"left": {"f1": 0.9}}}))
    report = tmp_path / "report.html"
    report.write_text("<html>report</html>")
    link = read_link(tracked.alpha)
    assert log_evaluation(tracked.alpha, metrics, report) == link.run_id
    artifact = log_bundle(tracked.alpha, bundles.alpha)
    assert artifact is not None and artifact.run_id == link.run_id
    assert artifact.digest == bundle_digest(bundles.alpha)
    assert artifact.source == f"runs:/{link.run_id}/bundle-{artifact.digest[:12]}"
    client = _client(link.tracking_uri)
    run = client.get_run(link.run_id)
    assert run.data.metrics["test_accuracy"] == 0.875
    assert run.data.tags["visiondeck.bundle.digest"] == artifact.digest
    assert {a.path for a in client.list_artifacts(link.run_id, "evaluation")} == {
        "evaluation/metrics.json", "evaluation/report.html"}
    files = {Path(a.path).name for a in client.list_artifacts(link.run_id,
                                                              artifact.artifact_path)}
    assert {"model.onnx", "weights.safetensors", "bundle.json"} <= files
    # a folder never tracked, with tracking off in its recipe: nothing happens, no error
    untracked = tmp_path / "untracked"
    untracked.mkdir()
    (untracked / "recipe.yaml").write_text("tracking:\n  enabled: false\n")
    assert log_evaluation(untracked, metrics) is None and not (untracked / "mlflow.json").exists()


def test_importing_the_registry_does_not_import_mlflow() -> None:
    code = ("import sys, visiondeck.registry, visiondeck.registry.models, "
            "visiondeck.registry.resolve, visiondeck.registry.runlog, visiondeck.cli; "
            "from visiondeck.registry import resolve_bundle; "
            "print(resolve_bundle('some/folder')); "
            "assert 'mlflow' not in sys.modules, 'mlflow imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "some/folder"
