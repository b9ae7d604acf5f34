"""The pipeline's contract: skip what is unchanged, re-run what changed and what follows it,
resume at a failed step, continue a killed training from its checkpoint, and say so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from tests.factories import loaded_after_import, write_learnable
from visiondeck.pipeline import (
    STEP_NAMES,
    PipelineFailed,
    run_pipeline,
    step_check,
    step_split,
    summary_table,
)

TINY = ["data.image_size=16", "data.channels=3", "data.augment=none", "data.cache=memory",
        "data.num_workers=1", "data.val_fraction=0.25", "data.test_fraction=0.25",
        "model.name=simple_cnn", "train.epochs=2", "train.batch_size=16", "train.lr=0.01"]


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Overrides for a tiny recipe over fresh learnable images, run from tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("VISIONDECK_MODEL_CACHE", str(tmp_path / "model-cache"))
    data = write_learnable(tmp_path / "images")
    return [f"data.source={data}", *TINY, f"output_dir={tmp_path / 'runs'}", "name=tiny"]


def statuses(result) -> dict[str, str]:
    return {r.name: r.status for r in result.steps}


def rendered(result) -> str:
    console = Console(record=True, width=200)
    console.print(summary_table(result))
    return console.export_text()


def test_skips_unchanged_reruns_train_and_after_and_keeps_a_better_champion(
        tiny: list[str], tmp_path: Path) -> None:
    first = run_pipeline(None, overrides=tiny, progress=False)
    assert statuses(first) == dict.fromkeys(STEP_NAMES, "ran")
    assert (first.bundle / "model.onnx").is_file() and (first.bundle / "model.int8.onnx").is_file()
    assert (first.run_dir / "evaluation" / "metrics.json").is_file()
    assert first.version == "1" and first.promoted
    state = json.loads(first.state_file.read_text())
    assert state["steps"]["train"]["status"] == "ran"
    assert first.state_file == tmp_path / "runs" / "pipeline" / "tiny" / "state.json"

    again = run_pipeline(None, overrides=tiny, progress=False)
    assert statuses(again) == dict.fromkeys(STEP_NAMES, "skipped")
    assert again.run_dir == first.run_dir and again.version == "1"
    table = rendered(again)
    for name in STEP_NAMES:
        assert name in table
    assert table.count("skipped") == len(STEP_NAMES) and "tiny version 1" in table

    # a learning rate that learns nothing: only train and what follows it run again, and
    # the registry's policy keeps the better champion
    worse = run_pipeline(None, overrides=[*tiny, "train.lr=1e-9"], progress=False)
    assert statuses(worse) == {"check": "skipped", "split": "skipped", "train": "ran",
                               "evaluate": "ran", "export": "ran", "register": "ran",
                               "promote": "refused"}
    assert worse.run_dir != first.run_dir and worse.version == "2" and not worse.promoted
    assert "kept champion" in worse.step("promote").key
    from visiondeck.registry.models import _alias_version
    from visiondeck.registry.store import open_store

    store = open_store(None, tmp_path / "runs", must_exist=True)
    assert _alias_version(store, "tiny", "champion") == "1"


def test_failed_step_is_resumed_without_redoing_earlier_ones(tiny: list[str]) -> None:
    untracked = [*tiny, "tracking.enabled=false"]
    upto = run_pipeline(None, overrides=untracked, progress=False,
                        steps=["check", "split", "train", "evaluate"])
    assert statuses(upto)["evaluate"] == "ran" and statuses(upto)["export"] == "not selected"
    # a real failure: a folder that is not a Bundle sits where export must publish
    blocker = upto.run_dir / "bundle"
    blocker.mkdir()
    (blocker / "notes.txt").write_text("mine, do not replace")

    with pytest.raises(PipelineFailed) as failed:
        run_pipeline(None, overrides=untracked, progress=False)
    result = failed.value.result
    assert failed.value.step == "export" and failed.value.exit_code == 7
    assert statuses(result) == {"check": "skipped", "split": "skipped", "train": "skipped",
                                "evaluate": "skipped", "export": "failed",
                                "register": "not run", "promote": "not run"}
    assert "not a Bundle" in result.step("export").key
    assert "failed" in rendered(result) and "not run" in rendered(result)
    state = json.loads(result.state_file.read_text())
    assert state["steps"]["export"]["status"] == "failed"
    assert state["steps"]["evaluate"]["status"] == "ran"

    (blocker / "notes.txt").unlink()
    blocker.rmdir()
    resumed = run_pipeline(None, overrides=untracked, progress=False)
    assert statuses(resumed) == {"check": "skipped", "split": "skipped", "train": "skipped",
                                 "evaluate": "skipped", "export": "ran", "register": "off",
                                 "promote": "off"}
    assert resumed.run_dir == upto.run_dir and (resumed.bundle / "bundle.json").is_file()


def test_killed_training_continues_from_its_checkpoint(tiny: list[str],
                                                       tmp_path: Path) -> None:
    overrides = [*tiny, "tracking.enabled=false", "train.epochs=5"]
    process = subprocess.Popen(
        [sys.executable, "-m", "visiondeck", "pipeline", *overrides],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    checkpoint = tmp_path / "runs" / "tiny" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    try:
        while not checkpoint.exists():
            assert process.poll() is None, "the pipeline ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 4 minutes"
            time.sleep(0.01)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the whole process group this test started
        process.wait()
    state = json.loads((tmp_path / "runs" / "pipeline" / "tiny" / "state.json").read_text())
    assert state["steps"]["train"]["status"] == "running"
    info = json.loads((tmp_path / "runs" / "tiny" / "run.json").read_text())
    assert info["status"] == "running"

    result = run_pipeline(None, overrides=overrides, progress=False)
    assert statuses(result)["check"] == "skipped" and statuses(result)["split"] == "skipped"
    train = result.step("train")
    assert train.status == "ran" and train.outputs["resumed"] is True
    assert train.key.startswith("resumed")
    assert result.run_dir == (tmp_path / "runs" / "tiny").resolve()
    info = json.loads((result.run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["epochs_run"] == 5
    assert not (tmp_path / "runs" / "tiny-2").exists()


def test_step_functions_share_the_state_with_the_pipeline(tiny: list[str]) -> None:
    """What the Airflow tasks call: one step each, handing over through the state file."""
    assert step_check(None, overrides=tiny).status == "ran"
    split = step_split(None, overrides=tiny)
    assert split.status == "ran" and split.outputs["counts"]["test"] == 18
    assert step_split(None, overrides=tiny).status == "skipped"
    result = run_pipeline(None, overrides=tiny, steps=["check", "split"], progress=False)
    assert statuses(result)["check"] == "skipped" and statuses(result)["split"] == "skipped"
    assert statuses(result)["train"] == "not selected"
    # the data changes: check runs again, and the split refuses a silent re-split
    extra = Path(tiny[0].partition("=")[2]) / "left" / "left_999.png"
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(extra)
    with pytest.raises(PipelineFailed) as failed:
        run_pipeline(None, overrides=tiny, steps=["check", "split"], progress=False)
    assert failed.value.step == "split" and failed.value.exit_code == 4
    assert statuses(failed.value.result)["check"] == "ran"


def test_cli_selects_steps_and_refuses_a_missing_upstream(tiny: list[str]) -> None:
    from visiondeck.cli import app

    runner = CliRunner()
    done = runner.invoke(app, ["pipeline", *tiny, "--only", "check"])
    assert done.exit_code == 0, done.output
    assert "check" in done.output and "ran" in done.output and "not selected" in done.output
    later = runner.invoke(app, ["pipeline", *tiny, "--from", "evaluate"])
    assert later.exit_code == 2
    assert "'train' has not finished" in later.output
    unknown = runner.invoke(app, ["pipeline", *tiny, "--only", "deploy"])
    assert unknown.exit_code == 2 and "unknown pipeline step" in unknown.output


def test_pipeline_and_dag_imports_stay_light() -> None:
    """Airflow parses the DAG file often: importing the pipeline must not pull in torch."""
    assert loaded_after_import(
        ["visiondeck.pipeline.runner", "visiondeck.pipeline.steps"],
        ["torch", "lightning", "timm", "mlflow", "onnxruntime"]) == []


def test_a_second_pipeline_on_the_same_recipe_stops_at_once(tiny: list[str],
                                                            tmp_path: Path) -> None:
    from visiondeck.pipeline import PipelineError
    from visiondeck.pipeline.state import pipeline_lock

    with pipeline_lock(tmp_path / "runs" / "pipeline" / "tiny"), \
            pytest.raises(PipelineError, match="another pipeline is running"):
        run_pipeline(None, overrides=tiny, progress=False)
    assert statuses(run_pipeline(None, overrides=tiny, steps=["check"], progress=False)) \
        ["check"] == "ran"


def test_a_recipe_name_the_registry_would_refuse_fails_before_any_step(
        tiny: list[str], tmp_path: Path) -> None:
    from visiondeck.registry.errors import RegistryError

    with pytest.raises(RegistryError, match="not a valid model name"):
        run_pipeline(None, overrides=[*tiny, "name=x' OR name LIKE '%"], progress=False)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "prepared").exists()
