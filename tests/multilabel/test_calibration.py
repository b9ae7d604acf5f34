"""Per-label calibration: one temperature per label fitted on validation logits (the
single-label fit, reused), thresholds chosen on the calibrated probabilities, the
temperatures carried in bundle.json and applied by `Calibration.label_probabilities` (so the
Predictor answers calibrated probabilities), old Bundles unchanged."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.multilabel.runs import recipe
from tests.multilabel.synth import LABELS, write_set
from visiondeck.export.calibration import Calibration, sigmoid
from visiondeck.export.errors import BundleError

pytestmark = pytest.mark.timeout(600)


def _bce(z: np.ndarray, y: np.ndarray, t: float) -> float:
    p = np.clip(sigmoid(z / t), 1e-12, 1 - 1e-12)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def test_one_temperature_per_label_minimises_that_labels_nll() -> None:
    from visiondeck.evaluate.multilabel import fit_label_temperatures, label_ece

    rng = np.random.default_rng(0)
    true = rng.normal(0, 2, (4000, 3))
    y = (rng.random(true.shape) < sigmoid(true)).astype(int)
    logits = true * np.array([3.0, 1.0, 0.4])  # over-, well- and under-confident
    fitted = fit_label_temperatures(logits, y)
    grid = np.linspace(0.05, 20, 40000)
    for j in range(3):  # the oracle: the best temperature on a fine grid
        best = grid[np.argmin([_bce(logits[:, j], y[:, j], t) for t in grid])]
        assert fitted[j] == pytest.approx(best, rel=2e-3)
    assert fitted[0] == pytest.approx(3.0, rel=0.1) and fitted[2] == pytest.approx(0.4, rel=0.1)
    before = label_ece(y, sigmoid(logits))
    after = label_ece(y, sigmoid(logits / fitted))
    assert before[0] > 0.05 and after[0] < before[0] / 3 and after[2] < before[2] / 3
    # a perfectly separated label gives nothing to fit on: it keeps 1.0
    assert fit_label_temperatures(np.array([[-3.0], [4.0]]), np.array([[0], [1]]))[0] == 1.0


def test_bundle_calibration_carries_label_temperatures() -> None:
    classes = ["a", "b", "c"]
    raw = {"temperature": 1.0, "label_thresholds": {"a": 0.4},
           "label_temperatures": {"c": 0.5, "a": 2.0}}  # not in class order
    calibration = Calibration.from_dict(raw, classes)
    logits = np.array([[2.0, -1.0, 1.0], [-4.0, 0.0, -0.5]])
    expected = sigmoid(logits / np.array([2.0, 1.0, 0.5]))  # b missing: 1.0
    assert np.allclose(calibration.label_probabilities(logits), expected)
    again = Calibration.from_dict(calibration.to_dict(), classes)
    assert again.to_dict() == calibration.to_dict()
    assert again.to_dict()["label_temperatures"] == {"c": 0.5, "a": 2.0}
    # a Bundle written before per-label temperatures: plain sigmoids, as before
    old = Calibration.from_dict({"temperature": 1.0, "label_thresholds": {"a": 0.4}}, classes)
    assert "label_temperatures" not in old.to_dict()
    assert np.allclose(old.label_probabilities(logits), sigmoid(logits))
    for bad in ({"a": 0}, {"a": -1.0}, {"a": "2"}, {"zz": 1.5}, [1.0, 2.0]):
        with pytest.raises(BundleError, match="label_temperatures"):
            Calibration.from_dict({"label_temperatures": bad}, classes)


def _noisy_manifest(tmp: Path) -> Path:
    """The synthetic corners with a fifth of the label sets replaced at random: validation
    then holds mistakes, so each label has a temperature to fit."""
    manifest = write_set(tmp / "data", 160, form="labels")
    rows = list(csv.reader(manifest.open()))
    rng = np.random.default_rng(3)
    for row in rows[1:]:
        if rng.random() < 0.2:
            row[1] = "|".join(n for n in LABELS if rng.random() < 0.5)
    with manifest.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return manifest


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from visiondeck.evaluate.core import evaluate_run
    from visiondeck.train.runner import train

    tmp = tmp_path_factory.mktemp("calibration")
    run = train(recipe(tmp, _noisy_manifest(tmp), "train.epochs=4"), progress=False).run_dir
    result = evaluate_run(run, n_boot=20, report=False)
    return {"run": run, "result": result}


def test_thresholds_are_chosen_on_the_calibrated_validation_probabilities(evaluated: dict
                                                                          ) -> None:
    from visiondeck.evaluate.multilabel import choose_thresholds, label_ece
    from visiondeck.evaluate.multilabel import sigmoid as ml_sigmoid
    from visiondeck.evaluate.predict import predict_run_subsets
    from visiondeck.train.artifacts import load_trained

    run, metrics = evaluated["run"], evaluated["result"].metrics
    stored = json.loads((run / "evaluation" / "calibration.json").read_text())
    temps = np.array([stored["label_temperatures"][c] for c in LABELS])
    assert (temps != 1.0).any()  # the noise left something to calibrate
    subsets = predict_run_subsets(load_trained(run))
    val, test = subsets["val"], subsets["test"]
    thresholds, _ = choose_thresholds(val.labels, ml_sigmoid(val.logits / temps))
    assert [stored["label_thresholds"][c] for c in LABELS] == pytest.approx(thresholds,
                                                                           abs=1e-6)
    section = metrics["calibration"]
    assert section["fit_on"] == "val" and section["temperatures"] == stored["label_temperatures"]
    before = label_ece(test.labels, ml_sigmoid(test.logits))
    after = label_ece(test.labels, ml_sigmoid(test.logits / temps))
    assert [section["ece_before"][c] for c in LABELS] == pytest.approx(before, abs=1e-6)
    assert [section["ece_after"][c] for c in LABELS] == pytest.approx(after, abs=1e-6)


def test_the_predictor_answers_calibrated_probabilities(evaluated: dict, tmp_path: Path
                                                         ) -> None:
    from visiondeck.export.onnx_export import export_run
    from visiondeck.export.predictor import Predictor

    run = Path(shutil.copytree(evaluated["run"], tmp_path / "run"))
    images = sorted((Path(json.loads((run / "run.json").read_text())["split"]["root"])
                     / "images").glob("*.png"))[:6]
    calibration = run / "evaluation" / "calibration.json"
    stored = json.loads(calibration.read_text())
    plain = {**stored, "label_temperatures": {c: 1.0 for c in LABELS}}
    calibration.write_text(json.dumps(plain))
    export_run(run, out_dir=tmp_path / "plain")
    calibration.write_text(json.dumps({**stored, "label_temperatures": {
        "red": 2.0, "green": 0.5}}))
    export_run(run, out_dir=tmp_path / "scaled")
    bundle = json.loads((tmp_path / "scaled" / "bundle.json").read_text())
    assert bundle["calibration"]["label_temperatures"] == {"red": 2.0, "green": 0.5}
    raw = Predictor(tmp_path / "plain").predict([str(p) for p in images])
    scaled = Predictor(tmp_path / "scaled").predict([str(p) for p in images])
    compared = 0
    for a, b in zip(raw, scaled, strict=True):
        for sa, sb in zip(a.scores, b.scores, strict=True):
            p, t = sa.probability, {"red": 2.0, "green": 0.5}.get(sa.label, 1.0)
            if sa.label == "blue":  # no temperature: the same answer
                assert sb.probability == sa.probability
            elif 0.01 <= p <= 0.99:  # (6-decimal rounding blurs the logit near 0 and 1)
                expected = float(sigmoid(np.log(p / (1 - p)) / t))
                assert sb.probability == pytest.approx(expected, abs=1e-4)
                assert sb.threshold == sa.threshold
                compared += 1
            elif t > 1:  # a temperature above 1 pulls towards 1/2
                assert abs(sb.probability - 0.5) <= abs(p - 0.5)
            else:  # ... below 1 pushes away
                assert abs(sb.probability - 0.5) >= abs(p - 0.5)
    assert compared
