"""Ablation grids and k-fold cross-validation on tiny data (a few seconds of training)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


def test_two_by_two_ablation_resumes_and_tunes_a_binary_threshold(tiny_recipe, tmp_path: Path
                                                                   ) -> None:
    from visiondeck.evaluate.ablate import ablate, parse_vary

    shutil.rmtree(tmp_path / "images" / "middle")  # a binary task: left vs right
    recipe = tiny_recipe("train.epochs=1", "tracking.enabled=false")
    factors = parse_vary(["loss=ce,focal", "model.attention=none,cbam"])  # loss → train.loss
    assert factors == {"train.loss": ["ce", "focal"], "model.attention": ["none", "cbam"]}
    options = {"positive_class": "right", "target_sensitivity": 0.9}
    result = ablate(recipe, factors, out_dir=tmp_path / "abl", evaluate=options)
    assert [(c.factors["train.loss"], c.factors["model.attention"]) for c in result.cells] == [
        ("ce", "none"), ("ce", "cbam"), ("focal", "none"), ("focal", "cbam")]
    assert not any(c.reused for c in result.cells)
    effects = result.effects
    assert effects["train.loss"]["ce"] == 0.0 and effects["model.attention"]["none"] == 0.0
    mean = {(r["train.loss"], r["model.attention"]): r["mean"] for r in result.table}
    expected = (mean["focal", "none"] + mean["focal", "cbam"]
                - mean["ce", "none"] - mean["ce", "cbam"]) / 2
    assert effects["train.loss"]["focal"] == pytest.approx(expected)
    saved = json.loads((tmp_path / "abl" / "results.json").read_text())
    assert len(saved["cells"]) == 4 and saved["table"][0]["seeds"] == 1
    assert (tmp_path / "abl" / "effects.png").is_file()
    cell = result.cells[0].run_dir
    calibration = json.loads((cell / "evaluation" / "calibration.json").read_text())
    assert calibration["decision_threshold"]["positive_class"] == "right"
    metrics = json.loads((cell / "evaluation" / "metrics.json").read_text())
    assert metrics["decision_threshold"]["val"]["sensitivity"] >= 0.9
    # the command resumes the same grid: every cell is reused, nothing is trained again
    from typer.testing import CliRunner

    from visiondeck.cli import app
    from visiondeck.config import save_recipe

    save_recipe(recipe, tmp_path / "recipe.yaml")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "abl").rglob("weights.safetensors")}
    output = CliRunner().invoke(app, ["ablate", str(tmp_path / "recipe.yaml"), "--vary",
                                      "loss=ce,focal", "--vary", "model.attention=none,cbam",
                                      "--out", str(tmp_path / "abl")])
    assert output.exit_code == 0, output.output
    assert "effect of train.loss" in output.output and "focal" in output.output
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "abl").rglob("weights.safetensors")}
    assert len(before) == 4 and after == before


def test_one_factor_at_a_time_design() -> None:
    from visiondeck.evaluate.ablate import plan_cells

    cells = plan_cells({"a": ["1", "2", "3"], "b": ["x", "y"]}, "ofat")
    assert cells == [{"a": "1", "b": "x"}, {"a": "2", "b": "x"}, {"a": "3", "b": "x"},
                     {"a": "1", "b": "y"}]
    assert len(plan_cells({"a": ["1", "2", "3"], "b": ["x", "y"]})) == 6


def test_cross_validation_with_two_folds(tiny_recipe, tmp_path: Path) -> None:
    from visiondeck.evaluate.cv import cross_validate

    recipe = tiny_recipe("train.epochs=1", "tracking.enabled=false")
    seen: list[int] = []
    result = cross_validate(recipe, 2, out_dir=tmp_path / "cv", evaluate={"report": False},
                            on_fold=lambda k, headline: seen.append(k))
    assert seen == [0, 1]
    assert {"mean", "std", "min", "max"} <= set(result.summary["accuracy"])
    infos = [json.loads((run / "run.json").read_text()) for run in result.runs]
    assert [i["fold"] for i in infos] == [0, 1]
    metrics = [json.loads((r / "evaluation" / "metrics.json").read_text()) for r in result.runs]
    # the two folds validate on different files and test on the same ones
    assert metrics[0]["n"] == metrics[1]["n"] and metrics[0]["n_val"] + metrics[1]["n_val"] > 0
    summary = json.loads((tmp_path / "cv" / "cv.json").read_text())["summary"]
    accuracies = [m["headline"]["accuracy"] for m in metrics]
    assert summary["accuracy"]["mean"] == pytest.approx(sum(accuracies) / 2)
