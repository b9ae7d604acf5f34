"""`visiondeck evaluate RECIPE --cv K` on multi-label data: iteratively stratified folds,
one BCE run per fold selected by val_map, each evaluated with thresholds chosen on its own
validation fold, and mAP (macro, micro), macro F1, subset accuracy and Hamming loss reported
per fold with their mean ± std."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.multilabel.runs import recipe
from tests.multilabel.synth import LABELS, write_set
from visiondeck.cli import app

pytestmark = pytest.mark.timeout(600)

REPORTED = ("map_macro", "map_micro", "f1_macro", "subset_accuracy", "hamming_loss")


def test_cross_validation_of_a_multilabel_manifest(tmp_path: Path) -> None:
    from visiondeck.data.multilabel import split_labels
    from visiondeck.train.artifacts import load_run_splits, load_trained

    manifest = write_set(tmp_path / "data", 100, form="flags")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(tmp_path, manifest, "train.epochs=3")
                                   .model_dump(mode="json")))
    out = tmp_path / "cv"
    result = CliRunner().invoke(app, ["evaluate", str(path), "--cv", "3", "--out", str(out),
                                      "--boot", "20"])
    assert result.exit_code == 0, result.output
    assert "fold 3/3: mAP" in result.output and "subset accuracy" in result.output
    cv = json.loads((out / "cv.json").read_text())
    assert cv["folds"] == 3 and len(cv["per_fold"]) == 3
    for key in REPORTED:
        values = [fold[key] for fold in cv["per_fold"]]
        row = cv["summary"][key]
        assert row["mean"] == pytest.approx(statistics.fmean(values))
        assert row["std"] == pytest.approx(statistics.stdev(values))
        assert row["min"] == min(values) and row["max"] == max(values)
        assert f"{key}" in result.output  # the mean ± std table
    # the corners are easy: every fold learns them
    assert all(fold["map_macro"] >= 0.8 for fold in cv["per_fold"])
    assert all(0 <= fold["hamming_loss"] <= 0.3 for fold in cv["per_fold"])

    folds = []
    for k in range(3):
        run = out / f"fold-{k}"
        trained = load_trained(run)
        assert trained.multilabel and trained.classes == list(LABELS)
        info = json.loads((run / "run.json").read_text())
        assert info["fold"] == k and "val_map" in info["metrics"]
        metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
        assert metrics["task"] == "multilabel"
        assert metrics["headline"] == pytest.approx(cv["per_fold"][k])
        folds.append(metrics["n_val"])
    # iterative stratification: every validation fold holds every label
    loaded, _ = load_run_splits(out / "fold-0")
    assert loaded.multilabel and loaded.folds == 3
    for k in range(3):
        _, val = loaded.fold(k)
        assert len(val) == folds[k]
        present = {name for r in val for name in split_labels(r.label)}
        assert present == set(LABELS)
