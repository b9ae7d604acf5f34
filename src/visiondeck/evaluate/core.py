"""`evaluate_run(run_dir)`: from a finished run to metrics.json, calibration.json and a report.

The run's own split decides what is scored: the validation files fit everything that is
*chosen* (temperature, rejection threshold, decision threshold) and the test files only
measure, so no number in the report was tuned on the images it is reported on. A gate
(`--gate` or the recipe's `train.gate`, see `gates.py`) is checked on validation at the
chosen operating threshold and re-checked on the scored split.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visiondeck.evaluate import calibration as cal
from visiondeck.evaluate import gates as gating
from visiondeck.evaluate.metrics import sensitivity_specificity
from visiondeck.evaluate.predict import EvaluationError, Predictions, predict_arrays
from visiondeck.evaluate.scores import (
    bootstrap_ci,
    clean_json,
    compute_metrics,
    headline_metrics,
    most_confused,
)

__all__ = ["EvaluationError", "EvaluationResult", "evaluate_run"]


@dataclass
class EvaluationResult:
    """What `evaluate_run` measured and where it wrote it."""

    run_dir: Path
    out_dir: Path
    split: str
    metrics: dict[str, Any]  # the content of metrics.json
    calibration: dict[str, Any]  # the content of calibration.json
    report: Path | None
    summary: Path | None
    skipped: list[str] = field(default_factory=list)

    @property
    def headline(self) -> dict[str, float]:
        return self.metrics["headline"]

    @property
    def gate(self) -> dict[str, Any] | None:
        """The gate's verdict (metrics.json "gate"), None when no gate was set."""
        return self.metrics.get("gate")


def _positive_index(classes: list[str], positive_class: str | None,
                    target_sensitivity: float | None) -> int | None:
    if positive_class is not None:
        if positive_class not in classes:
            raise EvaluationError(f"unknown positive class {positive_class!r}",
                                  hint=f"classes: {', '.join(classes)}")
        return classes.index(positive_class)
    if target_sensitivity is not None:
        if len(classes) != 2:
            raise EvaluationError("a target sensitivity needs a binary task (two classes)",
                                  hint="drop --target-sensitivity, or name --positive-class")
        return 1
    return None


def _calibrate(val: Predictions, classes: list[str], positive: int | None, *,
               reject_method: str, reject_keep: float, target_sensitivity: float | None,
               operating_point: bool = False) -> tuple[float, dict[str, Any], Any]:
    temperature = cal.fit_temperature(val.logits, val.labels)
    threshold = cal.fit_reject_threshold(val.logits, temperature, method=reject_method,
                                         keep=reject_keep)
    reject = {"method": reject_method, "threshold": round(float(threshold), 6)}
    choice = None
    if len(classes) == 2 and positive is not None and (target_sensitivity is not None
                                                       or operating_point):
        probs = cal.softmax(val.logits, temperature)
        try:
            choice = cal.fit_decision_threshold(probs[:, positive], val.labels, positive,
                                                target_sensitivity=target_sensitivity)
        except ValueError as exc:
            raise EvaluationError(f"cannot tune the decision threshold: {exc}") from None
    return temperature, reject, choice


def _decide(probs: np.ndarray, choice: Any) -> np.ndarray:
    if choice is None:
        return probs.argmax(axis=1)
    return np.where(probs[:, choice.positive] >= choice.threshold, choice.positive,
                    1 - choice.positive)


def _reject_section(model: Any, spec: Any, val: Predictions, test: Predictions,
                    reject: dict[str, Any], temperature: float, keep: float, *, tta: bool,
                    ood_dir: str | os.PathLike[str] | None, seed: int
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from visiondeck.evaluate.ood import reference_sets

    method, threshold = reject["method"], reject["threshold"]

    def fires(logits: np.ndarray) -> float | None:
        if not len(logits):
            return None
        return float(cal.reject_mask(logits, method, threshold, temperature).mean())

    def score(logits: np.ndarray) -> np.ndarray:
        if method == "max_prob":
            return cal.softmax(logits, temperature).max(axis=1)
        return cal.energy_score(logits, temperature)

    correct = test.logits.argmax(axis=1) == test.labels
    section: dict[str, Any] = {
        **reject, "keep_target": keep, "fit_on": "val",
        "fire_rate": {"val": fires(val.logits), "test": fires(test.logits),
                      "test_correct": fires(test.logits[correct]),
                      "test_wrong": fires(test.logits[~correct])},
        "ood_sources": {},
    }
    scores = {"val": score(val.logits), "test": score(test.logits)}
    for name, images in reference_sets(spec, folder=ood_dir, seed=seed).items():
        logits = predict_arrays(model, images, spec, tta=tta)
        section["fire_rate"][name] = fires(logits)
        section["ood_sources"][name] = len(images)
        scores[name] = score(logits)
    return section, scores


def evaluate_run(
    run_dir: str | os.PathLike[str],
    split: str = "test",
    *,
    tta: bool = False,
    positive_class: str | None = None,
    target_sensitivity: float | None = None,
    reject_method: str = "max_prob",
    reject_keep: float = 0.95,
    ood_dir: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    n_boot: int = 1000,
    gate: str | None = None,
    gradcam_samples: int = 6,
    gradcam_method: str = "gradcam",
    report: bool = True,
    batch_size: int = 256,
    seed: int = 0,
) -> EvaluationResult:
    """Score a run on its held-out split and write RUN/evaluation/ (see the module doc).

    `split` "test" (default) or "val". `positive_class` names the class whose sensitivity
    and specificity are reported; with `target_sensitivity` (binary tasks) the decision
    threshold is tuned on validation for it and stored. `reject_method` "max_prob" or
    "energy", with the threshold keeping `reject_keep` of validation images.
    `gate` (default: the run recipe's `train.gate`): rules such as
    "sensitivity>=0.92,specificity>=0.88,auc>=0.95"; on a binary task the decision
    threshold is then chosen on validation for the gate's sensitivity (Youden's J without
    one), and the verdict lands in metrics.json "gate" (`EvaluationResult.gate`).
    """
    from visiondeck.evaluate.predict import predict_run_subsets
    from visiondeck.train.artifacts import load_trained

    if split not in ("test", "val"):
        raise EvaluationError(f"unknown split {split!r}", hint="use test or val")
    if reject_method not in ("max_prob", "energy"):
        raise EvaluationError(f"unknown reject method {reject_method!r}",
                              hint="use max_prob or energy")
    trained = load_trained(run_dir)
    classes = list(trained.classes)
    recipe = getattr(trained, "recipe", None)
    gate = gate if gate is not None else (recipe.train.gate if recipe is not None else None)
    if getattr(trained, "multilabel", False):
        return _evaluate_multilabel(trained, Path(run_dir), split, gate=gate,
                                    positive_class=positive_class, tta=tta,
                                    target_sensitivity=target_sensitivity, out_dir=out_dir,
                                    n_boot=n_boot, batch_size=batch_size, seed=seed,
                                    report=report, gradcam_samples=gradcam_samples,
                                    gradcam_method=gradcam_method)
    rules = gating.parse_gate(gate) if gate else []
    gating.check_rules(rules, multilabel=False, classes=classes)
    if rules and len(classes) == 2:
        if target_sensitivity is None:
            target_sensitivity = gating.sensitivity_target(rules)
        positive_class = positive_class or classes[1]
    elif rules and gating.needs_positive(rules) and positive_class is None:
        raise EvaluationError("a sensitivity/specificity gate needs a positive class",
                              hint="binary tasks use their second class; name one with "
                                   "--positive-class")
    positive = _positive_index(classes, positive_class, target_sensitivity)
    subsets = predict_run_subsets(trained, tta=tta, batch_size=batch_size)
    val, scored = subsets["val"], subsets[split]
    temperature, reject, choice = _calibrate(val, classes, positive, reject_method=reject_method,
                                             reject_keep=reject_keep,
                                             target_sensitivity=target_sensitivity,
                                             operating_point=bool(rules))
    raw_probs = cal.softmax(scored.logits)
    probs = cal.softmax(scored.logits, temperature)
    pred = _decide(probs, choice)
    full = compute_metrics(scored.labels, probs, classes, predictions=pred, positive=positive)
    rel_before = cal.reliability(raw_probs, scored.labels)
    rel_after = cal.reliability(probs, scored.labels)
    calibration_section = {
        "temperature": round(temperature, 6), "fit_on": "val",
        "nll_before": cal.negative_log_likelihood(scored.logits, scored.labels),
        "nll_after": cal.negative_log_likelihood(scored.logits, scored.labels, temperature),
        "ece_before": rel_before.ece, "ece_after": rel_after.ece,
        "reliability_before": rel_before.to_dict(), "reliability_after": rel_after.to_dict(),
    }
    reject_section, reject_scores = _reject_section(
        trained.model, trained.spec, val, scored, reject, temperature, reject_keep, tta=tta,
        ood_dir=ood_dir, seed=seed)
    decision = None
    if choice is not None:
        argmax_sens, argmax_spec = sensitivity_specificity(scored.labels, probs.argmax(axis=1),
                                                           choice.positive)
        sens, spec = sensitivity_specificity(scored.labels, pred, choice.positive)
        decision = {"positive_class": classes[choice.positive], "threshold": choice.threshold,
                    "target_sensitivity": choice.target_sensitivity,
                    "val": {"sensitivity": choice.val_sensitivity,
                            "specificity": choice.val_specificity},
                    split: {"sensitivity": sens, "specificity": spec},
                    f"{split}_argmax": {"sensitivity": argmax_sens,
                                        "specificity": argmax_spec}}
    headline = headline_metrics(full)
    headline["ece"] = float(rel_after.ece)
    ci95 = bootstrap_ci(scored.labels, probs, predictions=pred, positive=positive,
                        n_boot=n_boot, seed=seed)
    gate_section = None
    if rules:
        val_probs = cal.softmax(val.logits, temperature)
        val_full = compute_metrics(val.labels, val_probs, classes,
                                   predictions=_decide(val_probs, choice), positive=positive)
        operating = None if choice is None else {
            "positive_class": classes[choice.positive],
            "threshold": round(float(choice.threshold), 6), "chosen_on": "val"}
        gate_section = gating.check_gate(rules, val_full, full, ci95, test_split=split,
                                         threshold=operating)
    cm = np.asarray(full["confusion_matrix"]["counts"])
    metrics = clean_json({
        "format_version": 1, "run": str(Path(run_dir)), "split": split,
        "split_id": _split_id(Path(run_dir)), "classes": classes, "tta": tta,
        "n": len(scored), "n_val": len(val), "skipped": scored.skipped,
        "headline": headline,
        "ci95": ci95,
        **{k: v for k, v in full.items() if k != "n"},
        "calibration": calibration_section, "reject": reject_section,
        "decision_threshold": decision, "most_confused": most_confused(cm, classes),
        **({"gate": gate_section} if gate_section is not None else {}),
    })
    calibration_json = {
        "temperature": round(temperature, 6), "reject": reject,
        "decision_threshold": None if choice is None else {
            "positive_class": classes[choice.positive],
            "threshold": round(float(choice.threshold), 6)},
    }
    target = Path(out_dir) if out_dir else Path(run_dir) / "evaluation" / (
        "" if split == "test" else split)
    target.mkdir(parents=True, exist_ok=True)
    _write_json(target / "metrics.json", metrics)
    if split == "test":
        _write_json(target / "calibration.json", calibration_json)
    _write_predictions(target / "predictions.csv", scored, probs, pred, classes,
                       cal.reject_mask(scored.logits, reject["method"], reject["threshold"],
                                       temperature))
    result = EvaluationResult(Path(run_dir), target, split, metrics, calibration_json, None,
                              None, list(scored.skipped))
    if report:
        from visiondeck.evaluate.report import write_report

        result.report, result.summary = write_report(
            result, trained=trained, scored=scored, probs=probs, pred=pred,
            reliabilities=(rel_before, rel_after), reject_scores=reject_scores,
            gradcam_samples=gradcam_samples, gradcam_method=gradcam_method, seed=seed)
    return result


def _evaluate_multilabel(trained: Any, run_dir: Path, split: str, *, gate: str | None,
                         positive_class: str | None, tta: bool,
                         target_sensitivity: float | None,
                         out_dir: str | os.PathLike[str] | None, n_boot: int, batch_size: int,
                         seed: int, report: bool, gradcam_samples: int,
                         gradcam_method: str) -> EvaluationResult:
    """A multi-label run (see `evaluate.multilabel`): per-label temperatures, then
    thresholds, chosen on validation; per-label scores and curves; the gate, if any."""
    from visiondeck.evaluate.multilabel import calibration_json, evaluate_multilabel

    if positive_class:
        raise EvaluationError("a positive class is for single-label runs",
                              hint="multi-label runs choose a threshold per label; drop "
                                   "--positive-class (--target-sensitivity applies to every "
                                   "label, a gate's sensitivity[LABEL] bound to one)")
    target = Path(out_dir) if out_dir else None
    metrics, written = evaluate_multilabel(
        trained, run_dir, split, tta=tta, target_sensitivity=target_sensitivity,
        out_dir=target, n_boot=n_boot, batch_size=batch_size, seed=seed, report=report,
        gradcam_samples=gradcam_samples, gradcam_method=gradcam_method, gate=gate)
    folder = target or run_dir / "evaluation" / ("" if split == "test" else split)
    calibration = calibration_json(metrics["thresholds"]["values"],
                                   metrics["calibration"]["temperatures"])
    return EvaluationResult(run_dir, folder, split, metrics, calibration, written, None,
                            list(metrics.get("skipped") or []))


def _split_id(run_dir: Path) -> str | None:
    info = json.loads((run_dir / "run.json").read_text())
    return (info.get("split") or {}).get("id")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _write_predictions(path: Path, scored: Predictions, probs: np.ndarray, pred: np.ndarray,
                       classes: list[str], unknown: np.ndarray) -> None:
    """One row per scored file: what the model said, how sure, and whether it would abstain."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["relpath", "label", "predicted", "confidence", "correct", "unknown"])
        for i, relpath in enumerate(scored.relpaths):
            writer.writerow([relpath, classes[scored.labels[i]], classes[pred[i]],
                             f"{probs[i, pred[i]]:.6f}", int(pred[i] == scored.labels[i]),
                             int(unknown[i])])

