"""Evaluation gates: parsed, checked on val at the operating point and on test, exit 5."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from visiondeck.cli import app
from visiondeck.errors import ConfigError
from visiondeck.evaluate.gates import GateRule, check_gate, parse_gate
from visiondeck.evaluate.predict import EvaluationError
from visiondeck.evaluate.scores import compute_metrics


def test_gate_text_is_parsed_and_refused_when_malformed() -> None:
    rules = parse_gate("sensitivity>=0.92, specificity>=0.88,AUC>=0.95, roc_auc>0.5")
    assert rules == [
        GateRule("sensitivity", ">=", 0.92),
        GateRule("specificity", ">=", 0.88),
        GateRule("auc", ">=", 0.95),
        GateRule("auc", ">", 0.5),
    ]
    assert str(rules[0]) == "sensitivity>=0.92"
    with pytest.raises(ConfigError, match="unknown gate metric 'speed'"):
        parse_gate("speed>=3")
    with pytest.raises(ConfigError, match="cannot read gate rule"):
        parse_gate("sensitivity=>0.9")
    with pytest.raises(ConfigError, match="no rule"):
        parse_gate(" , ")


def test_a_rule_passes_only_on_both_splits_and_shows_the_interval() -> None:
    # val: 3 of 4 positives found (0.75), all 4 negatives kept; test: 4 of 4, 3 of 4
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    val_pred = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    test_pred = np.array([1, 1, 1, 1, 1, 0, 0, 0])
    probs = np.eye(2)[y] * 0.8 + 0.1
    classes = ["neg", "pos"]
    val = compute_metrics(y, probs, classes, predictions=val_pred, positive=1)
    test = compute_metrics(y, probs, classes, predictions=test_pred, positive=1)
    gate = check_gate(
        parse_gate("sensitivity>=0.8,specificity>=0.7,auc>=0.99"),
        val,
        test,
        {"sensitivity": [0.5, 1.0], "roc_auc_macro": [1.0, 1.0]},
    )
    rows = {r["metric"]: r for r in gate["rules"]}
    assert (rows["sensitivity"]["val"], rows["sensitivity"]["test"]) == (0.75, 1.0)
    assert rows["sensitivity"]["passed_val"] is False and rows["sensitivity"]["passed_test"]
    assert rows["sensitivity"]["passed"] is False  # failing on val fails the rule
    assert (rows["specificity"]["val"], rows["specificity"]["test"]) == (1.0, 0.75)
    assert rows["specificity"]["passed"] is True
    assert rows["auc"]["test_ci95"] == [1.0, 1.0] and rows["auc"]["passed"] is True
    assert rows["sensitivity"]["test_ci95"] == [0.5, 1.0]
    assert gate["passed"] is False and gate["spec"] == "sensitivity>=0.8,specificity>=0.7,auc>=0.99"


def test_evaluate_gate_is_stored_and_a_failure_exits_5(trained_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    ok = CliRunner().invoke(
        app,
        ["evaluate", str(run), "--gate", "accuracy>=0,auc>=0", "--boot", "20", "--gradcam", "0"],
    )
    assert ok.exit_code == 0, ok.output
    gate = json.loads((run / "evaluation" / "metrics.json").read_text())["gate"]
    assert gate["passed"] is True and [r["metric"] for r in gate["rules"]] == ["accuracy", "auc"]
    assert all(r["test_ci95"] is not None and r["val"] is not None for r in gate["rules"])
    assert "gate accuracy>=0,auc>=0" in ok.output and "95 % CI" in ok.output
    report = html.unescape((run / "evaluation" / "report.html").read_text())
    assert "Gate accuracy>=0,auc>=0: passed" in report

    bad = CliRunner().invoke(
        app, ["evaluate", str(run), "--gate", "accuracy>1", "--boot", "20", "--gradcam", "0"]
    )
    assert bad.exit_code == 5, bad.output
    assert "FAILED" in bad.output and "register" in bad.output
    stored = json.loads((run / "evaluation" / "metrics.json").read_text())["gate"]
    assert stored["passed"] is False


def test_a_sensitivity_gate_needs_a_positive_class_on_many_classes(trained_run: Path) -> None:
    from visiondeck.evaluate.core import evaluate_run

    with pytest.raises(EvaluationError, match="needs a positive class"):
        evaluate_run(
            trained_run,
            gate="sensitivity>=0.9",
            report=False,
            out_dir=Path("/nonexistent-never-written"),
        )


def test_the_recipes_train_gate_is_the_default_gate(trained_run: Path, tmp_path: Path) -> None:
    import yaml

    from visiondeck.evaluate.core import evaluate_run

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["train"]["gate"] = "accuracy>1"
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = evaluate_run(run, n_boot=20, report=False)
    assert result.gate["spec"] == "accuracy>1" and result.gate["passed"] is False
    assert evaluate_run(run, gate="accuracy>=0", n_boot=20, report=False).gate["passed"]
