"""Resuming a run that had already finished changes nothing it recorded: not its files, not
its tracked MLflow run, not what `runs list` shows."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from tests.factories import write_learnable
from visiondeck.cli import app

runner = CliRunner()


def _files(run: Path) -> dict[str, bytes]:
    """Every file of the run folder (hidden ones too) with its bytes."""
    return {p.relative_to(run).as_posix(): p.read_bytes()
            for p in sorted(run.rglob("*")) if p.is_file()}


def _tracked(run: Path) -> dict:
    from mlflow import MlflowClient

    from visiondeck.registry.store import read_link

    link = read_link(run)
    assert link is not None, "the run was tracked"
    client = MlflowClient(tracking_uri=link.tracking_uri, registry_uri=link.tracking_uri)
    got = client.get_run(link.run_id)
    history = {k: [(m.step, m.value) for m in client.get_metric_history(link.run_id, k)]
               for k in got.data.metrics}
    return {"status": got.info.status, "end": got.info.end_time, "metrics": got.data.metrics,
            "history": history, "tags": got.data.tags, "params": got.data.params,
            "artifacts": sorted(a.path for a in client.list_artifacts(link.run_id))}


def _runs_list(runs: Path) -> str:
    listed = runner.invoke(app, ["runs", "list", "--runs-dir", str(runs)],
                           env={"COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    return re.sub(r"\s+", " ", listed.output)


def test_resuming_a_finished_run_changes_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = write_learnable(tmp_path / "images", per_class=12)
    runs = tmp_path / "runs"
    trained = runner.invoke(app, [
        "train", f"data.source={data}", "data.image_size=16", "data.channels=3",
        "data.augment=none", "data.cache=memory", "data.num_workers=1",
        "data.val_fraction=0.25", "data.test_fraction=0.25", "model.name=simple_cnn",
        "train.epochs=2", "train.batch_size=16", "train.lr=0.01",
        "train.min_val_accuracy=0.0", f"output_dir={runs}", "name=done"])
    assert trained.exit_code == 0, trained.output
    run = runs / "done"
    files, tracked, listed = _files(run), _tracked(run), _runs_list(runs)
    assert {"run.json", "history.json", "history.csv", "model/model.json"} <= set(files)
    assert "val_acc" in files["run.json"].decode() and "val_loss" in listed

    resumed = runner.invoke(app, ["train", "--resume", str(run)])

    assert resumed.exit_code == 0, resumed.output
    assert "already finished" in resumed.output
    assert "val_acc" in resumed.output and "best_val_acc" in resumed.output
    after = _files(run)
    assert sorted(after) == sorted(files)
    for name, content in files.items():
        assert after[name] == content, f"{name} changed"
    assert _tracked(run) == tracked
    assert _runs_list(runs) == listed


def test_resume_of_a_finished_run_reports_what_was_recorded(trained_run: Path) -> None:
    import json

    from visiondeck.train.runner import resume

    info = json.loads((trained_run / "run.json").read_text())
    result = resume(trained_run, progress=False)
    assert result.status == info["status"] == "completed"
    assert result.metrics == info["metrics"]
    assert result.epochs_run == info["epochs_run"] == 4
    assert result.best_checkpoint == Path(info["best_checkpoint"])
    assert result.extra["already_finished"] is True
    assert json.loads((trained_run / "run.json").read_text()) == info
