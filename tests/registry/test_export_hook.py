"""`visiondeck export RUN` logs the Bundle on the MLflow run that trained it."""

from __future__ import annotations

from pathlib import Path

from tests.factories import write_learnable
from typer.testing import CliRunner

from visiondeck.registry.store import read_link

TINY = ["data.image_size=16", "data.channels=3", "data.augment=none", "data.cache=memory",
        "data.num_workers=1", "data.val_fraction=0.25", "data.test_fraction=0.25",
        "model.name=simple_cnn", "train.epochs=1", "train.batch_size=16", "train.lr=0.01"]


def test_export_command_logs_the_bundle_on_the_training_run(tmp_path: Path, monkeypatch
                                                             ) -> None:
    from mlflow import MlflowClient

    from visiondeck.cli import app
    from visiondeck.config import load_recipe
    from visiondeck.registry.runlog import bundle_digest
    from visiondeck.registry.tracking import tracker_for
    from visiondeck.train.runner import train

    monkeypatch.chdir(tmp_path)
    data = write_learnable(tmp_path / "images", per_class=12)
    recipe = load_recipe(None, [f"data.source={data}", *TINY,
                                f"output_dir={tmp_path / 'runs'}", "name=hooked"])
    run_dir = train(recipe, progress=False, tracker=tracker_for(recipe)).run_dir
    link = read_link(run_dir)
    assert link is not None
    client = MlflowClient(tracking_uri=link.tracking_uri)
    before = {a.path for a in client.list_artifacts(link.run_id)}
    assert not any(p.startswith("bundle-") for p in before)

    out = tmp_path / "bundle"
    result = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(out),
                                      "--parity-images", "8"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    digest = bundle_digest(out)
    path = f"bundle-{digest[:12]}"
    assert f"runs:/{link.run_id}/{path}" in result.output
    logged = {Path(a.path).name: a.file_size for a in client.list_artifacts(link.run_id, path)}
    local = {p.name: p.stat().st_size for p in out.iterdir()
             if p.is_file() and not p.name.startswith(".")}
    assert {"model.onnx", "weights.safetensors", "bundle.json"} <= set(local)
    assert logged == local  # every file of the Bundle, byte for byte the same size
    run = client.get_run(link.run_id)
    assert run.data.tags["visiondeck.bundle.digest"] == digest
    assert run.data.tags["visiondeck.bundle.artifact_path"] == path


def test_export_of_an_untracked_run_logs_nothing(tmp_path: Path, monkeypatch) -> None:
    from visiondeck.cli.export_cmd import _track

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _track(run_dir, tmp_path / "bundle")  # no mlflow.json: nothing to attach to, no store
    assert not (tmp_path / "mlruns").exists() and not (run_dir / "mlflow.json").exists()
