"""Evaluation gates on multi-label runs: the grammar (`map`, `f1`, `subset_accuracy`,
`sensitivity[LABEL]`), the verdict with bootstrap intervals on validation and test, exit 5
from `evaluate --gate`, `register` refusing a failed gate, and the training gate on
`val_map`."""

from __future__ import annotations

import csv
import html
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.multilabel.runs import recipe, train_run
from tests.multilabel.synth import LABELS, write_set
from visiondeck.cli import app
from visiondeck.errors import ConfigError
from visiondeck.evaluate.gates import GateRule, check_gate, check_rules, parse_gate
from visiondeck.evaluate.multilabel import multilabel_metrics

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_run(tmp_path_factory.mktemp("gates"))


def test_the_grammar_reads_multilabel_and_per_label_rules() -> None:
    rules = parse_gate("map>=0.9, F1>=0.8,subset_accuracy>=0.5, hamming_loss<=0.1,"
                       "sensitivity[Red Car]>=0.9, recall[red]>0.5, roc_auc[red]>=0.7")
    assert rules == [
        GateRule("map", ">=", 0.9), GateRule("macro_f1", ">=", 0.8),
        GateRule("subset_accuracy", ">=", 0.5), GateRule("hamming_loss", "<=", 0.1),
        GateRule("sensitivity", ">=", 0.9, "Red Car"),  # the label keeps its case
        GateRule("sensitivity", ">", 0.5, "red"), GateRule("auc", ">=", 0.7, "red"),
    ]
    assert str(rules[4]) == "sensitivity[Red Car]>=0.9"
    for bad in ("accuracy[red]>=0.9", "sensitivity[]>=0.9", "map>=", "speed>=1"):
        with pytest.raises(ConfigError):
            parse_gate(bad)


def test_rules_are_checked_against_the_task_and_its_labels() -> None:
    check_rules(parse_gate("map>=0.9,sensitivity[red]>=0.9"), multilabel=True,
                classes=list(LABELS))
    with pytest.raises(ConfigError, match="single-label runs"):
        check_rules(parse_gate("accuracy>=0.9"), multilabel=True, classes=list(LABELS))
    with pytest.raises(ConfigError, match="no label 'purple'"):
        check_rules(parse_gate("sensitivity[purple]>=0.9"), multilabel=True,
                    classes=list(LABELS))
    with pytest.raises(ConfigError, match="multi-label runs"):
        check_rules(parse_gate("map>=0.9"), multilabel=False, classes=["a", "b"])
    with pytest.raises(ConfigError, match="only multi-label runs"):
        check_rules(parse_gate("sensitivity[a]>=0.9"), multilabel=False, classes=["a", "b"])


def test_check_gate_reads_multilabel_metrics_and_their_intervals() -> None:
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    p = np.array([[0.9, 0.2], [0.8, 0.4], [0.3, 0.7], [0.6, 0.1]])
    full = multilabel_metrics(y, p, ["a", "b"], [0.5, 0.5])
    # a: 2 TP, 1 FP; b: 1 TP, 1 FN -> subset accuracy 2/4, Hamming 2/8
    assert full["subset_accuracy"] == 0.5 and full["hamming_loss"] == 0.25
    gate = check_gate(parse_gate("subset_accuracy>=0.5,hamming_loss<=0.2,sensitivity[b]>=0.5,"
                                 "specificity[a]>=0.6"),
                      full, full, {"subset_accuracy": [0.25, 0.75],
                                   "sensitivity[b]": [0.0, 1.0]})
    rows = {r["metric"]: r for r in gate["rules"]}
    assert rows["subset_accuracy"]["passed"] and rows["subset_accuracy"]["test_ci95"] == [
        0.25, 0.75]
    assert not rows["hamming_loss"]["passed"] and rows["hamming_loss"]["test"] == 0.25
    assert rows["sensitivity[b]"]["test"] == 0.5 and rows["sensitivity[b]"]["passed"]
    assert rows["sensitivity[b]"]["test_ci95"] == [0.0, 1.0]
    assert rows["specificity[a]"]["test"] == 0.5 and not rows["specificity[a]"]["passed"]
    assert gate["passed"] is False


def test_evaluate_gate_on_a_multilabel_run(run: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    spec = "map>=0,f1>=0,subset_accuracy>=0,sensitivity[red]>=0.9"
    ok = CliRunner().invoke(app, ["evaluate", str(copy), "--gate", spec, "--boot", "50",
                                  "--gradcam", "0"])
    assert ok.exit_code == 0, ok.output
    metrics = json.loads((copy / "evaluation" / "metrics.json").read_text())
    gate = metrics["gate"]
    assert gate["passed"] is True
    assert [r["metric"] for r in gate["rules"]] == ["map", "macro_f1", "subset_accuracy",
                                                     "sensitivity[red]"]
    rows = {r["metric"]: r for r in gate["rules"]}
    assert rows["map"]["test"] == metrics["headline"]["map_macro"]
    assert rows["map"]["val"] == metrics["val"]["map_macro"]
    # every interval comes from the bootstrap of the test split and holds its value
    for row in gate["rules"]:
        low, high = row["test_ci95"]
        assert low <= row["test"] + 1e-9 and row["test"] <= high + 1e-9
    # the gate's sensitivity bound chose red's threshold on validation: it reaches 0.9 there
    assert metrics["thresholds"]["label_targets"] == {"red": 0.9}
    assert rows["sensitivity[red]"]["val"] >= 0.9
    assert "gate map>=0" in ok.output and "95 % CI" in ok.output
    report = html.unescape((copy / "evaluation" / "report.html").read_text())
    assert f"Gate {gate['spec']}: passed" in report and "ECE before" in report

    bad = CliRunner().invoke(app, ["evaluate", str(copy), "--gate", "map>1,hamming_loss<=1",
                                   "--boot", "20", "--gradcam", "0"])
    assert bad.exit_code == 5, bad.output
    assert "FAILED" in bad.output and "register" in bad.output
    refused = CliRunner().invoke(app, ["evaluate", str(copy), "--gate", "accuracy>=0.5",
                                       "--boot", "20", "--gradcam", "0"])
    assert refused.exit_code == 2 and "single-label" in refused.output


def test_register_refuses_a_failed_multilabel_gate_unless_forced(run: Path,
                                                                  tmp_path: Path) -> None:
    from visiondeck.evaluate.core import evaluate_run
    from visiondeck.export.onnx_export import export_run
    from visiondeck.registry.errors import RegistryRefusal
    from visiondeck.registry.models import register

    copy = Path(shutil.copytree(run, tmp_path / "run"))
    assert evaluate_run(copy, gate="map>1", n_boot=20, report=False).gate["passed"] is False
    export_run(copy)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(RegistryRefusal, match=r"failed its evaluation gate map>1"):
        register(copy, "ml-gated", tracking_uri=uri)
    done = register(copy, "ml-gated", tracking_uri=uri, force=True)
    assert done.forced and done.gate == "failed_evaluation_gate"


def _shuffled_manifest(tmp: Path) -> Path:
    """Labels that say nothing about the pixels: no network reaches val_map 1 on them."""
    manifest = write_set(tmp / "data", 90, form="labels")
    rows = list(csv.reader(manifest.open()))
    labels = [r[1] for r in rows[1:]]
    np.random.default_rng(1).shuffle(labels)
    with manifest.open("w", newline="") as handle:
        csv.writer(handle).writerows([rows[0], *([r[0], lab] for r, lab in
                                                 zip(rows[1:], labels, strict=True))])
    return manifest


def test_the_training_gate_on_val_map_exits_5(tmp_path: Path) -> None:
    import yaml

    manifest = _shuffled_manifest(tmp_path)
    base = recipe(tmp_path, manifest, "train.epochs=2").model_dump(mode="json")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(base))
    failed = CliRunner().invoke(app, ["train", str(path), "train.gate_metric=val_map",
                                      "train.min_val_accuracy=1.0", "name=gated"])
    assert failed.exit_code == 5, failed.output
    info = json.loads((tmp_path / "runs" / "gated" / "run.json").read_text())
    assert info["status"] == "failed_gate" and info["gate"]["metric"] == "val_map"
    assert info["gate"]["value"] == info["metrics"]["best_val_map"] < 1.0
    passed = CliRunner().invoke(app, ["train", str(path), "train.gate_metric=val_map",
                                      "train.min_val_accuracy=0.0", "name=open"])
    assert passed.exit_code == 0, passed.output
    assert json.loads((tmp_path / "runs" / "open" / "run.json").read_text())[
        "status"] == "passed"
