"""Ablation grids and k-fold cross-validation on tiny data (a few seconds of training)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


def test_ablation_grid_resumes_and_tunes_a_binary_threshold(tiny_recipe, tmp_path: Path
                                                            ) -> None:
    from visiondeck.evaluate.ablate import ablate, parse_vary

    shutil.rmtree(tmp_path / "images" / "middle")  # a binary task: left vs right
    recipe = tiny_recipe("train.epochs=1", "tracking.enabled=false")
    factors = parse_vary(["loss=ce,focal"])  # section found: train.loss
    assert factors == {"train.loss": ["ce", "focal"]}
    options = {"positive_class": "right", "target_sensitivity": 0.9}
    result = ablate(recipe, factors, out_dir=tmp_path / "abl", evaluate=options)
    assert [c.factors["train.loss"] for c in result.cells] == ["ce", "focal"]
    assert not any(c.reused for c in result.cells)
    assert result.effects["train.loss"]["ce"] == 0.0 and "focal" in result.effects["train.loss"]
    saved = json.loads((tmp_path / "abl" / "results.json").read_text())
    assert len(saved["cells"]) == 2 and saved["table"][0]["seeds"] == 1
    assert (tmp_path / "abl" / "effects.png").is_file()
    cell = result.cells[0].run_dir
    calibration = json.loads((cell / "evaluation" / "calibration.json").read_text())
    assert calibration["decision_threshold"]["positive_class"] == "right"
    metrics = json.loads((cell / "evaluation" / "metrics.json").read_text())
    assert metrics["decision_threshold"]["val"]["sensitivity"] >= 0.9
    again = ablate(recipe, factors, out_dir=tmp_path / "abl")  # resumes: nothing retrained
    assert all(c.reused for c in again.cells)


@pytest.mark.slow
def test_two_by_two_ablation(tiny_recipe, tmp_path: Path) -> None:
    from visiondeck.evaluate.ablate import ablate, parse_vary

    recipe = tiny_recipe("train.epochs=1", "tracking.enabled=false")
    factors = parse_vary(["train.loss=ce,focal", "model.attention=none,cbam"])
    result = ablate(recipe, factors, out_dir=tmp_path / "abl")
    assert len(result.cells) == 4 and len(result.table) == 4
    assert set(result.effects) == {"train.loss", "model.attention"}


def test_cross_validation_with_two_folds(tiny_recipe, tmp_path: Path) -> None:
    from visiondeck.evaluate.cv import cross_validate

    recipe = tiny_recipe("train.epochs=1", "tracking.enabled=false")
    seen: list[int] = []
    result = cross_validate(recipe, 2, out_dir=tmp_path / "cv",
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
