"""Reference statistics: measured at export through the exported model, stored in the
Bundle, checked when read, and computed exactly as serving computes live statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from visiondeck.export.bundle import load_bundle
from visiondeck.monitor import (
    EmbeddingSummary,
    MonitorError,
    ReferenceStats,
    build_reference,
    load_reference,
)


def test_export_stores_the_reference_beside_a_small_bundle_json(serve_bundle: Path,
                                                                trained_run: Path) -> None:
    from visiondeck.train.artifacts import load_run_splits

    info = json.loads((serve_bundle / "bundle.json").read_text())
    entry = info["reference"]
    assert entry["file"] == "reference.json" and len(entry["sha256"]) == 64
    assert {"brightness", "contrast", "size", "aspect", "confidence", "softmax",
            "embedding"} <= set(entry["features"])
    reference = load_reference(load_bundle(serve_bundle))
    assert reference is not None and reference.id == entry["id"]
    split, _ = load_run_splits(trained_run)
    held_out = len(split.subset("val")) + len(split.subset("test"))
    assert reference.n == held_out == entry["n"]  # every held-out image, nothing else
    assert reference.label_counts is not None and sum(reference.label_counts) == held_out
    assert reference.classes == ("left", "middle", "right")
    assert 0.0 <= reference.accuracy <= 1.0
    assert reference.embedding is not None and reference.embedding.dim == 256  # simple_cnn
    assert reference.embedding.basis_source == "train"
    assert reference.features["size"].edges == (8.0,)  # log2(16*16): every image is 16x16
    assert len((serve_bundle / "bundle.json").read_bytes()) < 4096


def test_onnx_embedding_output_is_the_penultimate_layer(serve_bundle: Path) -> None:
    import torch

    from visiondeck.export.torch_model import load_torch_model

    bundle = load_bundle(serve_bundle)
    session = ort.InferenceSession(str(bundle.onnx_path()), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    logits, embedding = session.run(["logits", "embedding"], {"input": x})
    model = load_torch_model(bundle)
    with torch.no_grad():
        features = model.forward_features(torch.from_numpy(x))
        expected = model.forward_head(features, pre_logits=True).numpy()
        expected_logits = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(embedding, expected, atol=1e-4)
    np.testing.assert_allclose(logits, expected_logits, atol=1e-4)


def test_reference_statistics_are_the_ones_serving_computes(serve_bundle: Path,
                                                            trained_run: Path) -> None:
    """Brightness/contrast at export and in the service come from the same decoded array."""
    from visiondeck.export.reference import compute_reference
    from visiondeck.serve.inference.preprocess import prepare_image
    from visiondeck.train.artifacts import load_run_splits

    bundle = load_bundle(serve_bundle)
    split, _ = load_run_splits(trained_run)
    records = split.subset("val")[:1]
    reference = compute_reference(bundle, bundle.onnx_path(), [(Path(split.root), records)])
    assert reference is not None and reference.n == 1
    served = prepare_image((Path(split.root) / records[0].relpath).read_bytes(), bundle,
                           max_bytes=1 << 20, max_pixels=1 << 20)
    assert reference.features["brightness"].mean == pytest.approx(served.stats.brightness,
                                                                   rel=1e-5)
    assert reference.features["contrast"].mean == pytest.approx(served.stats.contrast,
                                                                rel=1e-5)


def test_damaged_or_missing_reference_is_a_clear_error(bundle_copy: Path) -> None:
    path = bundle_copy / "reference.json"
    text = path.read_text()
    path.write_text(text.replace('"n":', '"n": ', 1))  # any edit breaks the checksum
    with pytest.raises(MonitorError, match="SHA-256"):
        load_reference(load_bundle(bundle_copy))
    path.unlink()
    with pytest.raises(MonitorError, match="cannot read") as info:
        load_reference(load_bundle(bundle_copy))
    assert "re-export" in info.value.hint
    manifest = json.loads((bundle_copy / "bundle.json").read_text())
    manifest["reference"]["file"] = "../../etc/passwd"
    (bundle_copy / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(MonitorError, match="does not name a file"):
        load_reference(load_bundle(bundle_copy))


def _synthetic(n: int = 200, seed: int = 0) -> ReferenceStats:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 3)) * 3
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    embeddings = rng.normal(size=(n, 32)) @ rng.normal(size=(32, 32))
    return build_reference(
        classes=["a", "b", "c"], widths=rng.integers(20, 40, n), heights=np.full(n, 30),
        brightness=rng.uniform(50, 200, n), contrast=rng.uniform(10, 60, n),
        probabilities=probabilities, predicted=probabilities.argmax(1),
        labels=rng.integers(0, 3, n), embeddings=embeddings,
        basis_embeddings=rng.normal(size=(100, 32)) @ rng.normal(size=(32, 32)))


def test_reference_round_trips_and_keeps_its_id() -> None:
    reference = _synthetic()
    again = ReferenceStats.from_dict(json.loads(json.dumps(reference.to_dict())))
    assert again.id == reference.id and again.class_counts == reference.class_counts
    assert again.embedding is not None and reference.embedding is not None
    z1, r1 = reference.embedding.project(np.ones(32))
    z2, r2 = again.embedding.project(np.ones(32))
    np.testing.assert_array_equal(z1, z2)
    assert r1[0] == r2[0]
    with pytest.raises(MonitorError, match="malformed"):
        ReferenceStats.from_dict({**reference.to_dict(), "class_counts": [1]})
    with pytest.raises(MonitorError, match="newer"):
        ReferenceStats.from_dict({**reference.to_dict(), "format_version": 99})


def test_embedding_summary_is_a_pca_basis_with_residuals() -> None:
    rng = np.random.default_rng(5)
    # data on a 3-dimensional subspace of R^10, plus a little noise
    basis = rng.normal(size=(3, 10))
    train = rng.normal(size=(300, 3)) @ basis + 0.01 * rng.normal(size=(300, 10))
    held_out = rng.normal(size=(100, 3)) @ basis + 0.01 * rng.normal(size=(100, 10))
    summary = EmbeddingSummary.fit(train, held_out, k=3)
    gram = summary.components @ summary.components.T
    np.testing.assert_allclose(gram, np.eye(3), atol=1e-4)  # orthonormal rows
    _, on_subspace = summary.project(held_out)
    _, off_subspace = summary.project(rng.normal(size=(20, 10)) * 3)
    assert on_subspace.max() < 0.1 < off_subspace.min()


def test_brightness_and_contrast_in_one_pass_equal_numpys() -> None:
    from visiondeck.monitor import brightness_contrast

    rng = np.random.default_rng(0)
    for shape in ((28, 28, 1), (224, 224, 3), (1, 1, 1), (3, 5, 3)):
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        mean, std = brightness_contrast(array)
        assert mean == pytest.approx(float(array.mean()), rel=1e-12)
        assert std == pytest.approx(float(array.std()), rel=1e-9, abs=1e-9)
    assert brightness_contrast(np.full((4, 4, 1), 255, np.uint8)) == (255.0, 0.0)
