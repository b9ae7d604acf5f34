"""`visiondeck train SOURCE`, `pipeline SOURCE --time`, `train --force` and `config show
key=value`, in process on tiny generated data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.factories import write_learnable
from visiondeck.cli import app
from visiondeck.train import budget
from visiondeck.train.budget import Throughput

runner = CliRunner()


def _common(tmp_path: Path) -> list[str]:
    return [
        f"output_dir={tmp_path / 'runs'}",
        f"data.prepared={tmp_path / 'prepared'}",
        "data.num_workers=1",
        "train.accelerator=cpu",
        "tracking.enabled=false",
    ]


@pytest.fixture
def measured(monkeypatch) -> Throughput:
    """A probe that measured 4 s per epoch (3 steps of 1 s, 2 validation batches of 0.5 s),
    on a clock that stands still: the plan, not this machine's speed, sets the epochs."""
    value = Throughput(
        step_s=1.0,
        val_batch_s=0.5,
        steps_per_epoch=3,
        val_batches=2,
        setup_s=0.0,
        decode_s=0.0,
        probe_s=0.0,
    )
    monkeypatch.setattr(budget, "measure_throughput", lambda recipe, **kw: value)
    monkeypatch.setattr(budget.time, "monotonic", lambda: 1000.0)  # the guard never fires
    return value


def test_config_show_overrides_without_a_recipe(tmp_path: Path) -> None:
    where = tmp_path / "some" / "dir"
    result = runner.invoke(app, ["config", "show", f"data.source={where}", "train.epochs=3"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["data"]["source"] == str(where) and shown["train"]["epochs"] == 3
    assert shown["train"]["lr"] == 0.001  # the defaults fill the rest


def test_train_source_chooses_says_why_and_saves_the_resolved_recipe(tmp_path: Path) -> None:
    data = write_learnable(tmp_path / "shapes", per_class=16, size=16)
    result = runner.invoke(
        app, ["train", str(data), "train.epochs=1", "train.batch_size=8", *_common(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "automatic recipe for" in result.output and "data.image_size" in result.output
    run = tmp_path / "runs" / "shapes"
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    # 16 px images: upsampled to the smallest input (24 px)
    assert saved["data"]["image_size"] == 24 and saved["data"]["channels"] == 3
    assert saved["train"]["epochs"] == 1 and saved["train"]["batch_size"] == 8  # yours
    assert saved["model"]["name"] == "resnet_small_t" and len(saved["data"]["mean"]) == 3
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


def test_train_source_with_time_sets_epochs_from_the_probe(tmp_path: Path, measured) -> None:
    data = write_learnable(tmp_path / "shapes", per_class=16, size=16)
    result = runner.invoke(
        app, ["train", str(data), "--time", "20s", "train.batch_size=8", *_common(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "→ 4 epoch(s)" in result.output  # 19.2 s of budget at 4 s per epoch
    run = tmp_path / "runs" / "shapes"
    assert yaml.safe_load((run / "recipe.yaml").read_text())["train"]["epochs"] == 4
    auto = json.loads((run / "auto.json").read_text())
    assert auto["budget"]["plan"]["epochs"] == 4
    assert {c["key"] for c in auto["choices"]} >= {"model.name", "data.mean", "train.lr"}


def test_a_split_clash_leaves_no_run_and_force_accepts_it(tmp_path: Path) -> None:
    data = write_learnable(tmp_path / "shapes", per_class=12, size=16)
    args = [
        "train",
        *_common(tmp_path),
        f"data.source={data}",
        "name=clash",
        "data.image_size=16",
        "model.name=simple_cnn",
        "train.epochs=1",
        "train.batch_size=8",
        "data.augment=none",
    ]
    assert runner.invoke(app, [*args, "data.val_fraction=0.25"]).exit_code == 0
    clash = runner.invoke(app, [*args, "data.val_fraction=0.3"])
    assert clash.exit_code == 4 and "--force" in clash.output
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["clash"]  # no clash-2
    forced = runner.invoke(app, [*args, "data.val_fraction=0.3", "--force"])
    assert forced.exit_code == 0, forced.output
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["clash", "clash-2"]


def test_pipeline_source_with_time_trains_within_and_skips_when_rerun(
    tmp_path: Path, measured
) -> None:
    data = write_learnable(tmp_path / "shapes", per_class=16, size=16)
    args = [
        "pipeline",
        str(data),
        "--time",
        "20s",
        "--only",
        "check",
        "--only",
        "split",
        "--only",
        "train",
        "train.batch_size=8",
        *_common(tmp_path),
    ]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    state = json.loads((tmp_path / "runs" / "pipeline" / "shapes" / "state.json").read_text())
    run = Path(state["steps"]["train"]["outputs"]["run_dir"])
    assert yaml.safe_load((run / "recipe.yaml").read_text())["train"]["epochs"] == 4
    assert json.loads((run / "auto.json").read_text())["budget"]["budget_s"] == 20.0
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    state = json.loads((tmp_path / "runs" / "pipeline" / "shapes" / "state.json").read_text())
    assert state["steps"]["train"]["outputs"]["run_dir"] == str(run)  # skipped, not retrained
    assert "train: skipped" in again.output
