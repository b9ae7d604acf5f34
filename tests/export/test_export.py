"""`export_run` and `visiondeck export`: parity, INT8, pruning, evaluation files, safety."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from visiondeck.cli import app
from visiondeck.export.bundle import load_bundle
from visiondeck.export.errors import ExportError
from visiondeck.export.onnx_export import export_run
from visiondeck.export.torch_model import load_torch_model

CONTRACT_KEYS = {"format", "format_version", "name", "created_at", "architecture", "model",
                 "classes", "input", "calibration", "metrics", "data", "parity", "variants",
                 "source_run", "versions"}


def test_bundle_json_follows_the_contract(exported, trained_run: Path) -> None:
    info = json.loads((exported.path / "bundle.json").read_text())
    assert set(info) >= CONTRACT_KEYS
    assert info["classes"] == ["left", "middle", "right"]
    assert info["input"] | {"max_bytes": 0} == {
        "image_size": 16, "channels": 3, "resize": "stretch", "mean": [0.5], "std": [0.5],
        "layout": "NCHW", "dtype": "float32", "max_bytes": 0, "max_pixels": 64_000_000}
    assert info["architecture"] == "simple_cnn" and info["model"]["name"] == "simple_cnn"
    assert info["source_run"] == str(trained_run.resolve())
    assert sum(info["data"]["train_counts"].values()) > 0 and info["data"]["fingerprint"]
    assert {"torch", "onnx", "onnxruntime", "visiondeck"} <= set(info["versions"])
    assert info["calibration"] == {"temperature": 1.0, "reject": None,
                                   "decision_threshold": None}  # the run was not evaluated
    # nothing half-written is left beside the Bundle
    assert [p.name for p in exported.path.parent.iterdir()] == ["bundle"]


def test_parity_is_measured_on_validation_images(exported) -> None:
    parity = exported.bundle.info["parity"]
    assert parity["source"] == "val" and 0 < parity["n_images"] <= 16
    assert parity["max_abs_diff"] < 1e-4 and parity["top1_agreement"] == 1.0
    assert parity == exported.parity


def test_onnx_model_is_valid_has_a_dynamic_batch_and_matches_the_weights(exported) -> None:
    path = exported.bundle.onnx_path()
    onnx.checker.check_model(str(path), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    # "embedding" (penultimate features) feeds drift monitoring; see tests/monitor
    assert [o.name for o in session.get_outputs()] == ["logits", "embedding"]
    assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic: any batch size
    import torch

    model = load_torch_model(exported.bundle)
    for n in (1, 5):
        x = np.random.default_rng(n).standard_normal((n, 3, 16, 16)).astype(np.float32)
        logits = session.run(["logits"], {"input": x})[0]
        assert logits.shape == (n, 3)
        with torch.no_grad():
            np.testing.assert_allclose(logits, model(torch.from_numpy(x)).numpy(), atol=1e-4)


def test_int8_variant_is_static_and_within_one_point_of_float(exported) -> None:
    variants = exported.bundle.variants
    fp32, int8 = variants["fp32"], variants["int8"]
    assert int8["file"] == "model.int8.onnx" and int8["method"] == "static"
    assert fp32["n_test"] > 0 and fp32["accuracy"] is not None
    assert abs(fp32["accuracy"] - int8["accuracy"]) <= 0.01
    assert int8["bytes"] < fp32["bytes"] / 2  # int8 weights: about a quarter of the size
    assert int8["bytes"] == exported.bundle.onnx_path("int8").stat().st_size
    graph = onnx.load(str(exported.bundle.onnx_path("int8"))).graph
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)


def test_evaluation_calibration_and_metrics_are_copied(trained_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    (run / "evaluation").mkdir()
    calibration = {"temperature": 1.7, "reject": {"method": "max_prob", "threshold": 0.6},
                   "decision_threshold": None}
    (run / "evaluation" / "calibration.json").write_text(json.dumps(calibration))
    (run / "evaluation" / "metrics.json").write_text(json.dumps(
        {"headline": {"accuracy": 0.97, "macro_f1": 0.96}, "per_class": {"left": {}}}))
    result = export_run(run, parity_images=4)
    assert result.path == run / "bundle"
    bundle = load_bundle(run / "bundle")
    assert bundle.info["calibration"] == calibration
    assert bundle.calibration.temperature == 1.7 and bundle.calibration.reject is not None
    assert bundle.info["metrics"] == {"accuracy": 0.97, "macro_f1": 0.96}
    assert "int8" not in bundle.variants
    assert "evaluation" not in bundle.info  # that metrics.json has no confusion matrix


def test_the_confusion_matrix_travels_in_the_bundle(trained_run: Path, tmp_path: Path) -> None:
    """The model card of a served Bundle shows it without the run folder."""
    from visiondeck.evaluate import evaluate_run

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    evaluate_run(run)
    report = json.loads((run / "evaluation" / "metrics.json").read_text())
    export_run(run, parity_images=4, int8=False)
    evaluation = load_bundle(run / "bundle").info["evaluation"]
    assert evaluation["confusion_matrix"]["counts"] == report["confusion_matrix"]["counts"]
    assert evaluation["split"] == report["split"]
    assert sum(map(sum, evaluation["confusion_matrix"]["counts"])) == report["n"]


def test_parity_failure_is_loud_and_leaves_nothing(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "bundle"
    out.parent.mkdir()
    with pytest.raises(ExportError, match="disagrees with PyTorch") as info:
        export_run(trained_run, out, parity_images=4, tolerance=-1.0)
    assert info.value.hint and "exporter" in info.value.hint
    assert list(out.parent.iterdir()) == []


def test_refuses_to_replace_a_folder_that_is_not_a_bundle(trained_run: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.txt").write_text("do not delete")
    with pytest.raises(ExportError, match="not a Bundle"):
        export_run(trained_run, out, parity_images=4)
    assert (out / "thesis.txt").read_text() == "do not delete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]


def _val_set(bundle, run: Path) -> tuple[np.ndarray, np.ndarray]:
    """The run's validation images, prepared by the Bundle, with their labels."""
    from visiondeck.train.artifacts import load_run_splits

    split = load_run_splits(run)[0]
    records = split.subset("val")
    images = np.stack([bundle.prepare(split.root / r.relpath) for r in records])
    return images, np.array([bundle.classes.index(r.label) for r in records])


def _mask_by_hand(model, amount: float, method: str) -> None:
    """Magnitude pruning written out: the smallest |w| over every conv and linear weight but
    the classifier's (unstructured), or each conv's output channels of smallest L2 norm."""
    import torch

    layers = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    head = [m for m in layers if isinstance(m, torch.nn.Linear)][-1]
    weights = [m.weight.data for m in layers if m is not head]
    with torch.no_grad():
        if method == "unstructured":
            flat = torch.cat([w.abs().flatten() for w in weights])
            cut = flat.sort().values[round(amount * flat.numel()) - 1]
            for w in weights:
                w[w.abs() <= cut] = 0.0
        else:
            for w in weights:
                if w.ndim == 4:
                    norms = w.flatten(1).norm(dim=1)
                    w[norms.argsort()[:round(amount * w.shape[0])]] = 0.0


# deep enough that pruning costs accuracy (this easy task keeps 100 % up to 95 % sparsity),
# so "before", "pruned" and "after" are different numbers to get right
# structured pruning now removes channels: tests/export/test_compression.py checks it
@pytest.mark.parametrize(("method", "amount"), [("unstructured", 0.98)])
def test_prune_records_sparsity_and_accuracy(exported, trained_run: Path, tmp_path: Path,
                                             method: str, amount: float) -> None:
    import torch
    from safetensors.numpy import load_file

    from visiondeck.export.predictor import Predictor

    result = export_run(trained_run, tmp_path / "b", prune=amount, prune_method=method,
                        prune_steps=4, parity_images=4)
    pruning = load_bundle(result.path).info["pruning"]
    assert pruning["method"] == method and pruning["steps"] == 4
    # the three validation accuracies, measured again here: before = the unpruned Bundle,
    # after = the pruned Bundle (both on ONNX Runtime), in between = masks applied by hand
    images, labels = _val_set(exported.bundle, trained_run)
    assert len(labels) == 24

    def accuracy(logits: np.ndarray) -> float:
        return float((logits.argmax(axis=1) == labels).mean())

    assert pruning["val_accuracy_before"] == pytest.approx(
        accuracy(Predictor(exported.bundle).logits(images)))
    assert pruning["val_accuracy_after"] == pytest.approx(
        accuracy(Predictor(result.bundle).logits(images)))
    masked = load_torch_model(exported.bundle)
    _mask_by_hand(masked, amount, method)
    with torch.no_grad():
        assert pruning["val_accuracy_pruned"] == pytest.approx(
            accuracy(masked(torch.from_numpy(images)).numpy()))

    weights = load_file(str(result.path / "weights.safetensors"))
    convs = [w for name, w in weights.items() if name.endswith("weight") and w.ndim == 4]
    if method == "unstructured":
        assert pruning["sparsity"] == pytest.approx(amount, abs=0.01)
    else:  # whole output channels are zero, half of each conv layer's filters
        for w in convs:
            dead = np.all(w.reshape(w.shape[0], -1) == 0, axis=1)
            assert dead.sum() == round(w.shape[0] * amount)
        assert 0 < pruning["sparsity"] < amount  # linear layers are left dense
    matrices = [w for w in weights.values() if w.ndim >= 2]
    share = sum(int((w == 0).sum()) for w in matrices) / sum(w.size for w in matrices)
    assert share > (amount - 0.1 if method == "unstructured" else 0.02)  # baked in, not masks
    assert not any(name.endswith(("_orig", "_mask")) for name in weights)


def test_export_command_prints_parity_and_the_variants(trained_run: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", str(trained_run), "--out", str(tmp_path / "b"),
                                      "--int8", "--parity-images", "4"])
    assert result.exit_code == 0, result.output
    assert "parity vs PyTorch on 4 val images" in result.output
    assert "model.int8.onnx" in result.output and "static" in result.output
    assert (tmp_path / "b" / "model.int8.onnx").is_file()
    # how the INT8 model was chosen: every candidate's figures, the kept one marked
    from visiondeck.export.quantize import default_candidates

    candidates = default_candidates(tmp_path / "b" / "model.onnx")
    text = " ".join(result.output.split())
    assert "INT8 candidates on" in text and "kept: fastest by CPU time" in text
    lines = [line for line in result.output.splitlines()
             if any(line.strip("│ ").startswith(c.name + " ") for c in candidates)]
    assert len(lines) == len(candidates)
    assert sum("✓" in line for line in lines) == 1, result.output


def test_export_command_reports_a_missing_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", str(tmp_path / "nope")])
    assert result.exit_code != 0
    assert "holds no trained model" in " ".join(result.output.split())


def test_poor_static_int8_is_compared_with_dynamic(trained_run: Path, tmp_path: Path) -> None:
    # a negative allowance makes any static result "poor", so the dynamic path always runs
    result = export_run(trained_run, tmp_path / "b", int8=True, parity_images=4,
                        max_int8_drop=-1.0)
    int8 = result.variants["int8"]
    assert int8["method"] in ("static", "dynamic")
    assert any("dynamic:" in note and note.endswith(f"kept {int8['method']}")
               for note in result.notes)
    assert sorted(p.name for p in result.path.glob("*.onnx")) == ["model.int8.onnx",
                                                                  "model.onnx"]
    assert load_bundle(result.path).info["export"]["notes"] == result.notes
