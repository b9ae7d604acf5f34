"""Ablation grids and k-fold cross-validation on tiny data (a few seconds of training)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest


def _accuracy_from_predictions(run_dir: Path) -> float:
    with (run_dir / "evaluation" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return sum(row["label"] == row["predicted"] for row in rows) / len(rows)


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
    # each cell's accuracy recounted from its predictions.csv, not taken from the ablation
    acc = {(c.factors["train.loss"], c.factors["model.attention"]):
           _accuracy_from_predictions(c.run_dir) for c in result.cells}
    assert {(r["train.loss"], r["model.attention"]): r["mean"] for r in result.table} == \
        pytest.approx(acc)
    assert result.effects == {
        "train.loss": {"ce": 0.0, "focal": pytest.approx(
            (acc["focal", "none"] + acc["focal", "cbam"] - acc["ce", "none"]
             - acc["ce", "cbam"]) / 2)},
        "model.attention": {"none": 0.0, "cbam": pytest.approx(
            (acc["ce", "cbam"] + acc["focal", "cbam"] - acc["ce", "none"]
             - acc["focal", "none"]) / 2)}}
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


def _evaluated_cell(root: Path, slug: str, accuracy: float) -> None:
    """A cell folder as an earlier ablation left it: evaluated, so it is reused as is."""
    folder = root / "cells" / slug / "evaluation"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"headline": {"accuracy": accuracy}}))


def test_means_stds_and_effects_of_known_cells(tiny_recipe, tmp_path: Path) -> None:
    """Every cell × seed already evaluated with a chosen accuracy: the table and the main
    effects are the numbers worked out by hand, and nothing is trained."""
    from visiondeck.evaluate.ablate import ablate

    known = {("ce", "none"): (0.50, 0.60), ("ce", "cbam"): (0.70, 0.70),
             ("focal", "none"): (0.60, 0.70), ("focal", "cbam"): (0.90, 1.00)}
    root = tmp_path / "abl"
    for (loss, attention), values in known.items():
        for seed, value in zip((0, 1), values, strict=True):
            _evaluated_cell(root, f"loss-{loss}_attention-{attention}_s{seed}", value)
    result = ablate(tiny_recipe("tracking.enabled=false"),
                    {"train.loss": ["ce", "focal"], "model.attention": ["none", "cbam"]},
                    seeds=(0, 1), out_dir=root)
    assert all(cell.reused for cell in result.cells) and len(result.cells) == 8
    assert not (tmp_path / "runs").exists()  # nothing trained
    table = {(r["train.loss"], r["model.attention"]): (r["mean"], r["std"], r["seeds"])
             for r in result.table}
    # means .55 .70 .65 .95; the sample std of (a, b) is |a − b| / √2
    assert table == {("ce", "none"): pytest.approx((0.55, 0.1 / 2 ** 0.5, 2)),
                     ("ce", "cbam"): pytest.approx((0.70, 0.0, 2)),
                     ("focal", "none"): pytest.approx((0.65, 0.1 / 2 ** 0.5, 2)),
                     ("focal", "cbam"): pytest.approx((0.95, 0.1 / 2 ** 0.5, 2))}
    # focal: (.65 + .95)/2 − (.55 + .70)/2 = .175; cbam: (.70 + .95)/2 − (.55 + .65)/2 = .225
    effects = {"train.loss": {"ce": 0.0, "focal": pytest.approx(0.175)},
               "model.attention": {"none": 0.0, "cbam": pytest.approx(0.225)}}
    assert result.effects == effects
    assert json.loads((root / "results.json").read_text())["effects"] == effects
    with (root / "table.csv").open() as handle:
        rows = [(r["train.loss"], r["model.attention"], float(r["mean"]))
                for r in csv.DictReader(handle)]
    assert rows == [("ce", "none", pytest.approx(0.55)), ("ce", "cbam", pytest.approx(0.70)),
                    ("focal", "none", pytest.approx(0.65)),
                    ("focal", "cbam", pytest.approx(0.95))]


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
