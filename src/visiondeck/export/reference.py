"""Reference statistics for drift monitoring, measured at export through the exported model.

The run's held-out images (validation + test, up to `limit`) are decoded with the same
decoder and limits serving uses, their image statistics taken from the decoded array
exactly as serving takes them (`serve/inference/preprocess.py`), and the ONNX model's calibrated
probabilities, decisions and embeddings recorded. The embedding's PCA basis is fitted on
training images (see `visiondeck.monitor.reference` for why). The result goes into the
Bundle as `reference.json`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visiondeck.data.multilabel import split_labels
from visiondeck.data.transforms import normalize
from visiondeck.export.bundle import Bundle, InputSpec
from visiondeck.export.checks import ort_session
from visiondeck.export.samples import pick_records
from visiondeck.imaging import ImageDecodeError, decode_image, resize_image
from visiondeck.monitor.reference import ReferenceStats, brightness_contrast, build_reference

__all__ = ["EMBEDDING_OUTPUT", "compute_reference", "with_embedding"]

EMBEDDING_OUTPUT = "embedding"


def compute_reference(bundle: Bundle, onnx_path: Path,
                      held_out: Sequence[tuple[Path, Sequence[Any]]],
                      basis: tuple[Path, Sequence[Any]] | None = None, *, limit: int = 1000,
                      basis_limit: int = 256, batch_size: int = 64) -> ReferenceStats | None:
    """Reference statistics of `held_out` (root, split records) pairs; None without images."""
    session = ort_session(onnx_path)
    outputs = [o.name for o in session.get_outputs()]
    names = ["logits"] + ([EMBEDDING_OUTPUT] if EMBEDDING_OUTPUT in outputs else [])
    pairs = [(Path(root), record) for root, records in held_out for record in records]
    measured = _measure(bundle, session, names, pick_records(pairs, limit, seed=4), batch_size)
    if measured is None:
        return None
    stats, logits, embeddings, labels = measured
    basis_embeddings = None
    if embeddings is not None and basis is not None:
        root, records = basis
        train = [(Path(root), r) for r in pick_records(records, basis_limit, seed=5)]
        basis_measured = _measure(bundle, session, names, train, batch_size)
        if basis_measured is not None:
            basis_embeddings = basis_measured[2]
    calibration = bundle.calibration
    images = dict(widths=stats[:, 0], heights=stats[:, 1], brightness=stats[:, 2],
                  contrast=stats[:, 3], embeddings=embeddings,
                  basis_embeddings=basis_embeddings, source=f"held-out images ({len(labels)})")
    if bundle.multilabel:  # each label's positive rate, as serving counts it
        probabilities = calibration.label_probabilities(logits)
        return build_reference(
            classes=bundle.classes, probabilities=probabilities,
            predicted=probabilities.argmax(axis=1),
            passed=probabilities >= calibration.thresholds(bundle.classes),
            true_sets=labels, **images)
    probabilities = calibration.probabilities(logits)
    return build_reference(
        classes=bundle.classes, probabilities=probabilities,
        predicted=calibration.decide(probabilities, bundle.classes), labels=labels, **images)


def _measure(bundle: Bundle, session: Any, names: list[str], pairs: list[tuple[Path, Any]],
             batch_size: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray] | None:
    """Image statistics, logits, embeddings and labels of readable images: class indices,
    or for a multi-label Bundle each image's true label set as a 0/1 row."""
    spec = bundle.input
    index = {c: i for i, c in enumerate(bundle.classes)}
    stats: list[tuple[float, float, float, float]] = []
    labels: list[Any] = []
    logits: list[np.ndarray] = []
    embeddings: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def run() -> None:
        out = session.run(names, {"input": np.stack(batch)})
        logits.append(out[0])
        if len(out) > 1:
            embeddings.append(out[1].reshape(len(batch), -1))
        batch.clear()

    for root, record in pairs:
        if bundle.multilabel:
            carried = split_labels(record.label)
            if any(name not in index for name in carried):
                continue
            truth: Any = np.isin(bundle.classes, carried)
        elif record.label in index:
            truth = index[record.label]
        else:
            continue
        try:
            array = decode_image(root / record.relpath, mode=spec.mode,  # type: ignore[arg-type]
                                 limits=spec.limits).array
        except (ImageDecodeError, OSError):
            continue
        # the statistics serving computes (serve/inference/preprocess.py), from the decoded array
        stats.append((array.shape[1], array.shape[0], *brightness_contrast(array)))
        labels.append(truth)
        resized = resize_image(array, spec.image_size, spec.resize)  # type: ignore[arg-type]
        batch.append(normalize(resized, spec.mean, spec.std))
        if len(batch) == batch_size:
            run()
    if batch:
        run()
    if not stats:
        return None
    return (np.asarray(stats, dtype=np.float64), np.concatenate(logits),
            np.concatenate(embeddings) if embeddings else None, np.asarray(labels))


def with_embedding(model: Any, spec: InputSpec, notes: list[str]) -> tuple[Any, list[str]]:
    """The module to export and its outputs: "logits", plus the penultimate features as
    "embedding" (what drift monitoring watches) when the network offers timm's
    `forward_head(x, pre_logits=True)` and the wrapped logits equal the network's own."""
    import torch

    if not (callable(getattr(model, "forward_features", None))
            and callable(getattr(model, "forward_head", None))):
        notes.append("the network has no forward_head(pre_logits=True): the Bundle has no "
                      "embedding output, so monitoring watches inputs and outputs only")
        return model, ["logits"]

    class WithEmbedding(torch.nn.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Any) -> tuple[Any, Any]:
            features = self.net.forward_features(x)
            return (self.net.forward_head(features),
                    self.net.forward_head(features, pre_logits=True).flatten(1))

    wrapped = WithEmbedding(model).eval()
    example = torch.randn((2, *spec.shape), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            logits, _ = wrapped(example)
            same = torch.allclose(logits, model(example), atol=1e-5, rtol=1e-4)
    except Exception as exc:  # an architecture whose head does not follow timm's contract
        same = False
        notes.append(f"no embedding output ({type(exc).__name__}: {str(exc)[:120]})")
    if not same:
        return model, ["logits"]
    return wrapped, ["logits", "embedding"]
