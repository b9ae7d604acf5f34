"""A multi-label run from manifest to Bundle: training learns the coloured corners,
evaluation fits per-label thresholds on validation, export keeps sigmoid parity, and the
torch-free Predictor and `visiondeck predict` answer every label with its verdict."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.multilabel.synth import LABELS, write_set
from visiondeck.cli import app
from visiondeck.config import Recipe, load_recipe
from visiondeck.evaluate.core import evaluate_run
from visiondeck.export.bundle import load_bundle
from visiondeck.export.onnx_export import export_run
from visiondeck.export.predictor import MultiLabelPrediction, Predictor
from visiondeck.train.artifacts import load_trained
from visiondeck.train.runner import train

pytestmark = pytest.mark.timeout(600)


def _recipe(tmp: Path, manifest: Path, *extra: str) -> Recipe:
    return load_recipe(None, [
        f"data.source={manifest}", f"data.prepared={tmp}/prep", "data.image_size=16",
        "data.augment=none", "data.num_workers=1", "train.epochs=6", "train.batch_size=16",
        "train.lr=0.01", f"output_dir={tmp}/runs", "name=ml", "tracking.enabled=false",
        *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("ml")
    manifest = write_set(tmp / "data", 120, form="flags")
    result = train(_recipe(tmp, manifest, "train.balance=weights"), progress=False)
    evaluation = evaluate_run(result.run_dir, n_boot=50, report=False)
    exported = export_run(result.run_dir)
    return {"tmp": tmp, "manifest": manifest, "result": result, "evaluation": evaluation,
            "export": exported}


def test_training_learns_and_selects_by_map(run: dict) -> None:
    result = run["result"]
    assert result.metrics["best_val_map"] >= 0.95
    assert "val_acc" not in result.metrics
    info = json.loads((result.run_dir / "run.json").read_text())
    # per-label n_neg/n_pos of the training files, recorded as the run's weights
    split = load_trained(result.run_dir)
    assert split.multilabel and split.classes == list(LABELS)
    assert len(info["class_weights"]) == 3 and all(w > 0 for w in info["class_weights"])
    header = (result.run_dir / "history.csv").read_text().splitlines()[0].split(",")
    assert {"val_map", "val_map_micro", "val_f1"} <= set(header)


def test_evaluation_fits_thresholds_on_validation(run: dict) -> None:
    metrics = run["evaluation"].metrics
    assert metrics["task"] == "multilabel"
    assert metrics["headline"]["map_macro"] >= 0.95
    assert set(metrics["per_label"]) == set(LABELS)
    assert metrics["thresholds"]["fit_on"] == "val"
    for name in ("map_macro", "f1_micro", "hamming_loss"):
        low, high = metrics["ci95"][name]
        assert low <= metrics["headline"][name] <= high
    folder = run["result"].run_dir / "evaluation"
    calibration = json.loads((folder / "calibration.json").read_text())
    assert calibration["label_thresholds"] == metrics["thresholds"]["values"]
    rows = list(csv.DictReader((folder / "predictions.csv").open()))
    assert len(rows) == metrics["n"] and set(rows[0]) >= {"labels", "predicted", "p_red"}


def test_bundle_records_task_and_thresholds_with_parity(run: dict) -> None:
    exported = run["export"]
    info = json.loads((exported.bundle.path / "bundle.json").read_text())
    assert info["task"] == "multilabel"
    assert info["calibration"]["label_thresholds"] == \
        run["evaluation"].metrics["thresholds"]["values"]
    assert exported.parity["max_abs_diff"] < 1e-4 and exported.parity["top1_agreement"] == 1
    assert load_bundle(exported.bundle.path).multilabel


def test_int8_variant_keeps_the_label_decisions(run: dict) -> None:
    exported = export_run(run["result"].run_dir, run["tmp"] / "bundle-int8", int8=True,
                          reference_images=0)
    int8 = exported.variants["int8"]
    # multi-label accuracy is per (image, label) decision at 0.5, agreement likewise
    assert int8["accuracy"] >= 0.9 and int8["agreement_with_fp32"] >= 0.95
    images = [str(p) for p in sorted((run["tmp"] / "data" / "images").glob("*.png"))[:16]]
    fp32 = Predictor(exported.bundle.path, variant="fp32").predict(images)
    quantised = Predictor(exported.bundle.path, variant="int8").predict(images)
    same = sum(a.labels == b.labels for a, b in zip(fp32, quantised, strict=True))
    assert same >= 14


def test_predictor_equals_the_torch_sigmoid(run: dict) -> None:
    bundle = run["export"].bundle
    trained = load_trained(run["result"].run_dir)
    images = sorted((run["tmp"] / "data" / "images").glob("*.png"))[:8]
    predictor = Predictor(bundle.path)
    answers = predictor.predict([str(p) for p in images])
    batch = np.stack([bundle.prepare(str(p)) for p in images])
    with torch.inference_mode():
        expected = torch.sigmoid(trained.model(torch.from_numpy(batch))).numpy()
    thresholds = bundle.calibration.thresholds(bundle.classes)
    for row, answer in enumerate(answers):
        assert isinstance(answer, MultiLabelPrediction)
        assert [s.label for s in answer.scores] == list(LABELS)
        got = np.array([s.probability for s in answer.scores])
        assert np.abs(got - expected[row]).max() < 1e-4
        assert [s.positive for s in answer.scores] == list(expected[row] >= thresholds)
        assert answer.label == "|".join(answer.labels)
    # the known label sets of the manifest come back
    truth = {r["path"]: {n for n in LABELS if r[n] == "1"}
             for r in csv.DictReader(run["manifest"].open())}
    right = sum(set(a.labels) == truth[f"images/{Path(a.source).name}"] for a in answers)
    assert right >= 7


def test_cli_predict_writes_a_column_pair_per_label(run: dict) -> None:
    image = str(run["tmp"] / "data" / "images" / "img_0000.png")
    bundle = str(run["export"].bundle.path)
    out = CliRunner().invoke(app, ["predict", bundle, image, "--format", "csv",
                                   "--workers", "0"])
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert {"prob_red", "pass_red", "prob_blue", "pass_green", "label"} <= set(rows[0])
    answer = Predictor(bundle).predict(image)[0]
    assert rows[0]["label"] == answer.label
    assert float(rows[0]["prob_red"]) == pytest.approx(answer.scores[2].probability, abs=1e-6)
    assert rows[0]["pass_red"] == str(answer.scores[2].positive).lower()
    lines = CliRunner().invoke(app, ["predict", bundle, image, "--format", "jsonl",
                                     "--workers", "0"])
    record = json.loads(lines.stdout.splitlines()[0])
    assert [s["label"] for s in record["scores"]] == list(LABELS)
    table = CliRunner().invoke(app, ["predict", bundle, image, "--workers", "0"])
    assert table.exit_code == 0 and "red" in table.stdout


def test_streaming_path_and_asymmetric_loss_train(tmp_path: Path) -> None:
    """data.cache=off (per-file decoding, multi-label collate), the rare-label sampler and
    the asymmetric loss run through training."""
    manifest = write_set(tmp_path / "data", 40)
    recipe = _recipe(tmp_path, manifest, "data.cache=off", "train.loss=asl",
                     "train.balance=sampler", "train.epochs=1")
    result = train(recipe, progress=False)
    assert result.status == "completed" and "best_val_map" in result.metrics


def test_cli_evaluate_prints_the_label_table(run: dict) -> None:
    out = CliRunner().invoke(app, ["evaluate", str(run["result"].run_dir), "--out",
                                   str(run["tmp"] / "eval-cli"), "--boot", "20"])
    assert out.exit_code == 0, out.output
    assert "map_macro" in out.output and "per label" in out.output
    assert json.loads((run["tmp"] / "eval-cli" / "metrics.json").read_text())["task"] == \
        "multilabel"
    html = (run["tmp"] / "eval-cli" / "report.html").read_text()
    assert "Per-label metrics" in html and all(f"<td>{name}</td>" in html for name in LABELS)
    assert html.count('src="data:image/png;base64,') >= 3 + 6  # history, PR, ROC, Grad-CAM
    assert (run["tmp"] / "eval-cli" / "plots" / "pr.png").is_file()


def test_grad_cam_of_a_chosen_label_looks_at_its_corner(run: dict) -> None:
    from tests.multilabel.synth import draw
    from visiondeck.explain.cam import explain_image

    trained = load_trained(run["result"].run_dir)
    picture = draw({"red", "blue"}, np.random.default_rng(5))
    corners = {"red": (slice(0, 8), slice(0, 8)), "blue": (slice(8, 16), slice(0, 8))}
    for name, (rows, cols) in corners.items():
        heat = explain_image(trained.model, picture, trained.spec,
                             class_index=trained.classes.index(name)).heatmap
        assert heat[rows, cols].mean() > 2 * heat.mean(), name


def test_a_killed_multilabel_run_resumes(tmp_path: Path) -> None:
    from tests.factories import crash_at_epoch
    from visiondeck.train.runner import resume

    manifest = write_set(tmp_path / "data", 40)
    recipe = _recipe(tmp_path, manifest, "train.epochs=3")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(recipe, progress=False, callbacks=[crash_at_epoch(2)])
    folder = tmp_path / "runs" / "ml"
    result = resume(folder, progress=False)
    assert result.status == "completed" and result.epochs_run == 3
    assert "best_val_map" in result.metrics
    history = json.loads((folder / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert all("val_map" in row for row in history)


def test_the_api_engine_and_the_lambda_handler_answer_the_trained_bundle(
        run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API server's engine and the Lambda handler load the trained multi-label Bundle
    and give each label the Predictor's probability and verdict (no softmax anywhere)."""
    import base64

    from tests.deploy.test_lambda import call, event, lam
    from visiondeck.serve.inference.engine import load_model

    bundle = run["export"].bundle
    image = sorted((run["tmp"] / "data" / "images").glob("*.png"))[0]
    [expected] = Predictor(bundle.path).predict([str(image)])
    model = load_model(str(bundle.path))
    assert model.multilabel
    [row] = model.run(bundle.prepare(str(image))[None])
    assert list(row.passed) == [s.positive for s in expected.scores]
    assert np.abs(row.probabilities - [s.probability for s in expected.scores]).max() < 1e-5
    lam._MODELS.clear()
    monkeypatch.setenv("VISIONDECK_BUNDLE", str(bundle.path))
    ev = event("v2-http-post-json.json")
    ev["body"] = json.dumps({"image": base64.b64encode(image.read_bytes()).decode()})
    status, body = call(ev)
    assert status == 200 and body["task"] == "multilabel"
    assert body["predicted_labels"] == expected.labels
    assert [e["passed"] for e in body["labels"]] == [s.positive for s in expected.scores]
    lam._MODELS.clear()


def test_ray_engine_rows_carry_the_label_columns_of_the_local_engine(run: dict,
                                                                     tmp_path: Path) -> None:
    """The Ray engine's scorer and compaction (run here without a cluster) write the local
    CSV's cells, prob_LABEL/pass_LABEL included, plus the file's hash."""
    import hashlib

    from visiondeck.scale import ray_predict

    bundle = run["export"].bundle
    images = sorted((run["tmp"] / "data" / "images").glob("*.png"))[:6]
    payload, digest = ray_predict._bundle_payload(bundle.path)
    parts = tmp_path / "out" / "parts"
    parts.mkdir(parents=True)
    scorer = ray_predict._ShardScorer(payload, digest, "fp32", 3, 4, str(parts),
                                      list(bundle.classes))
    scorer(ray_predict._shard(0, 0, [str(p) for p in images], [False] * len(images)))
    _, written, failed = ray_predict.compact_parts(tmp_path / "out", 3, write_csv=True,
                                                   labels=list(bundle.classes))
    assert failed == 0
    rows = list(csv.DictReader(written.open(newline="")))
    for row in rows:
        assert row.pop("sha256") == hashlib.sha256(Path(row["source"]).read_bytes()).hexdigest()
    local = CliRunner().invoke(app, ["predict", str(bundle.path), *map(str, images),
                                     "--format", "csv", "--workers", "0"])
    assert local.exit_code == 0, local.output
    assert rows == sorted(csv.DictReader(io.StringIO(local.stdout)), key=lambda r: r["source"])
    assert {f"prob_{name}" for name in LABELS} <= set(rows[0])


def test_bundle_reference_holds_each_labels_rate_as_served(run: dict) -> None:
    """Monitoring compares live label rates with the Bundle's reference: its counts are
    the labels passing their thresholds on the held-out images, as the Predictor (and the
    server, through the same Calibration) decides them, and the true sets beside them."""
    from visiondeck.data.split import load_split
    from visiondeck.monitor.reference import load_reference

    bundle = load_bundle(run["export"].bundle.path)
    reference = load_reference(bundle)
    assert reference is not None and reference.classes == tuple(LABELS)
    split = load_split(run["tmp"] / "prep")
    held_out = [r for r in split.records if r.subset in ("val", "test")]
    assert reference.n == len(held_out)
    answers = Predictor(bundle.path).predict([str(split.root / r.relpath) for r in held_out])
    passed = np.array([[s.positive for s in a.scores] for a in answers])
    truth = np.array([[name in r.label.split("|") for name in LABELS] for r in held_out])
    assert reference.class_counts == tuple(int(c) for c in passed.sum(axis=0))
    assert reference.label_counts == tuple(int(c) for c in truth.sum(axis=0))
    assert reference.label_rates == pytest.approx(
        {name: c / len(held_out) for name, c in zip(LABELS, passed.sum(axis=0), strict=True)})
    assert reference.accuracy == pytest.approx((passed == truth).all(axis=1).mean())


def test_a_gate_on_val_acc_is_refused_before_training(tmp_path: Path) -> None:
    """Multi-label runs log val_map, not val_acc: a gate left on val_acc would fail after all
    the training with no value. It is refused at once, and no run folder is left."""
    from visiondeck.errors import ConfigError

    manifest = write_set(tmp_path / "data", 24, form="flags")
    recipe = _recipe(tmp_path, manifest, "train.min_val_accuracy=0.5")
    with pytest.raises(ConfigError, match="no val_acc") as refused:
        train(recipe, progress=False)
    assert "train.gate_metric=val_map" in (refused.value.hint or "")
    assert not (tmp_path / "runs" / "ml").exists()
