"""Reference statistics: what the model's inputs and outputs looked like on held-out data.

`visiondeck export` runs the exported model over the run's held-out images (validation +
test) and stores this in the Bundle as `reference.json` (named in bundle.json's "reference"
entry with its SHA-256, so bundle.json stays small and a changed reference changes the
served version). Serving and `visiondeck monitor report` compare live traffic with it.

What is kept, per feature, is a `FeatureSummary` (percentiles + decile bins), never the
images or their raw values:
- input: brightness and contrast (mean and standard deviation of the decoded 0..255 pixels,
  exactly what serving computes), size (log2 of the pixel count) and aspect (log2 w/h);
- output: the predicted-class mix, the calibrated confidence, and each class's probability
  (the softmax vector: "black-box shift detection", one of the strongest detectors in
  Rabanser et al., *Failing Loudly*, NeurIPS 2019);
- the embedding (the model's penultimate layer, the ONNX output "embedding"), reduced to 8
  principal components plus the residual norm off that subspace. PCA rather than a random
  projection: the leading components carry most of the variance, so a shift of what the
  network "sees" moves them; the residual catches inputs that leave the subspace altogether
  (other data sets). The basis is fitted on *training* images and the distributions are
  measured on held-out ones, so the reference is out-of-sample exactly like live traffic
  (a basis fitted on the reference itself would make every new image look off-subspace).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from visiondeck._files import atomic_write_text
from visiondeck.monitor.errors import MonitorError
from visiondeck.monitor.stats import FeatureSummary, rounded

__all__ = [
    "EMBEDDING_COMPONENTS", "IMAGE_FEATURES", "MAX_SOFTMAX_CLASSES", "REFERENCE_FILE",
    "EmbeddingSummary", "ReferenceStats", "brightness_contrast", "build_reference",
    "image_features",
    "load_reference", "save_reference",
]  # fmt: skip

FORMAT = "visiondeck.reference"
FORMAT_VERSION = 1
REFERENCE_FILE = "reference.json"
IMAGE_FEATURES = ("brightness", "contrast", "size", "aspect")
EMBEDDING_COMPONENTS = 8
MAX_SOFTMAX_CLASSES = 64  # beyond this, per-class probability tests are left out


def image_features(width: Any, height: Any, brightness: Any, contrast: Any
                   ) -> dict[str, np.ndarray]:
    """The input features of images (arrays or scalars), the one definition everyone uses."""
    w = np.asarray(width, dtype=np.float64)
    h = np.asarray(height, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        size = np.log2(w * h)
        aspect = np.log2(w / h)
    return {"brightness": np.asarray(brightness, dtype=np.float64),
            "contrast": np.asarray(contrast, dtype=np.float64),
            "size": size, "aspect": aspect}


def brightness_contrast(array: np.ndarray) -> tuple[float, float]:
    """Brightness and contrast of a decoded uint8 image: the mean and standard deviation of
    its pixel values, the one definition the reference (at export) and the service use.

    One pass: equal to `array.mean()`, `array.std()` to float rounding (sums of uint8 values
    and squares are exact in float64 below 10^11 pixels), in a quarter of the time for the
    small images a service mostly sees, where numpy's per-call overhead dominates.
    """
    values = array.reshape(-1).astype(np.float64)
    mean = float(values.sum()) / values.size
    return mean, float(np.sqrt(max(0.0, float(values @ values) / values.size - mean * mean)))


@dataclass(frozen=True)
class EmbeddingSummary:
    """A PCA basis of the embedding and the reference distribution in it."""

    mean: np.ndarray  # (D,)
    components: np.ndarray  # (k, D), orthonormal rows
    projections: tuple[FeatureSummary, ...]  # one per component
    residual: FeatureSummary  # |e - mean - projection| off the subspace
    basis_n: int
    basis_source: str

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @classmethod
    def fit(cls, basis: np.ndarray, sample: np.ndarray, *, k: int = EMBEDDING_COMPONENTS,
            basis_source: str = "train") -> EmbeddingSummary:
        """Basis from `basis` embeddings, distributions from `sample` embeddings."""
        basis = np.asarray(basis, dtype=np.float64)
        if basis.ndim != 2 or basis.shape[0] < 2:
            raise ValueError("the embedding basis needs at least two embeddings")
        mean = basis.mean(axis=0)
        _, _, vt = np.linalg.svd(basis - mean, full_matrices=False)
        k = max(1, min(k, basis.shape[1], basis.shape[0] - 1))
        # round first, so serving projects with exactly the numbers stored
        mean = np.asarray(rounded(mean), dtype=np.float64)
        components = np.asarray(rounded(vt[:k]), dtype=np.float64).reshape(k, -1)
        draft = cls(mean, components, (), FeatureSummary.from_values([0.0]), basis.shape[0],
                    basis_source)
        z, r = draft.project(sample)
        return cls(mean, components, tuple(FeatureSummary.from_values(z[:, j])
                                           for j in range(k)),
                   FeatureSummary.from_values(r), basis.shape[0], basis_source)

    def project(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) or (D,) embeddings → (N, k) components and (N,) residual norms."""
        e = np.atleast_2d(np.asarray(embeddings, dtype=np.float64)).reshape(-1, self.dim)
        centred = e - self.mean
        z = centred @ self.components.T
        residual = np.linalg.norm(centred - z @ self.components, axis=1)
        return z, residual

    def to_dict(self) -> dict[str, Any]:
        return {"dim": self.dim, "basis_n": self.basis_n, "basis_source": self.basis_source,
                "mean": rounded(self.mean),
                "components": [rounded(row) for row in self.components],
                "projections": [p.to_dict() for p in self.projections],
                "residual": self.residual.to_dict()}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> EmbeddingSummary:
        mean = np.asarray(raw["mean"], dtype=np.float64)
        components = np.asarray(raw["components"], dtype=np.float64)
        projections = tuple(FeatureSummary.from_dict(p) for p in raw["projections"])
        if (mean.ndim != 1 or components.ndim != 2 or components.shape[1] != mean.shape[0]
                or len(projections) != components.shape[0]):
            raise ValueError("embedding mean, components and projections do not fit together")
        return cls(mean, components, projections, FeatureSummary.from_dict(raw["residual"]),
                   int(raw.get("basis_n", 0)), str(raw.get("basis_source", "")))


@dataclass(frozen=True)
class ReferenceStats:
    """Everything monitoring compares live traffic with (serialisable to JSON)."""

    classes: tuple[str, ...]
    n: int
    source: str
    class_counts: tuple[int, ...]  # predicted classes on the reference images
    features: dict[str, FeatureSummary]  # brightness, contrast, size, aspect, confidence
    probabilities: tuple[FeatureSummary, ...] | None = None  # per class, index order
    embedding: EmbeddingSummary | None = None
    label_counts: tuple[int, ...] | None = None  # true classes, when known
    accuracy: float | None = None  # of the model on the reference images
    created_at: str = field(default_factory=lambda: datetime.now(UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"))

    @property
    def class_shares(self) -> dict[str, float]:
        total = max(1, sum(self.class_counts))
        return {c: n / total for c, n in zip(self.classes, self.class_counts, strict=True)}

    @property
    def label_rates(self) -> dict[str, float]:
        """Each label's positive rate on the reference images, for a multi-label model
        (whose `class_counts` count the images each label passed on, an image counting
        once per passing label): counts / n."""
        return {c: k / max(1, self.n) for c, k in zip(self.classes, self.class_counts,
                                                     strict=True)}

    @cached_property
    def id(self) -> str:
        """Content hash: rows projected with this reference carry it (computed once)."""
        body = json.dumps(self._body(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def _body(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "created_at": self.created_at,
            "source": self.source, "n": self.n, "classes": list(self.classes),
            "class_counts": list(self.class_counts),
            "label_counts": None if self.label_counts is None else list(self.label_counts),
            "accuracy": self.accuracy,
            "features": {name: s.to_dict() for name, s in self.features.items()},
            "probabilities": None if self.probabilities is None
            else [p.to_dict() for p in self.probabilities],
            "embedding": None if self.embedding is None else self.embedding.to_dict(),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self._body(), "id": self.id}

    @classmethod
    def from_dict(cls, raw: Any) -> ReferenceStats:
        """Parse and validate; any problem is one `MonitorError` saying what to do."""
        try:
            if not isinstance(raw, Mapping) or raw.get("format") != FORMAT:
                raise ValueError(f"format must be {FORMAT!r}")
            if int(raw.get("format_version", 0)) > FORMAT_VERSION:
                raise ValueError(f"format_version {raw.get('format_version')} is newer than "
                                 f"this VisionDeck reads ({FORMAT_VERSION})")
            classes = tuple(str(c) for c in raw["classes"])
            counts = tuple(int(c) for c in raw["class_counts"])
            if len(counts) != len(classes) or len(classes) < 2:
                raise ValueError("class_counts must have one count per class")
            probabilities = raw.get("probabilities")
            labels = raw.get("label_counts")
            reference = cls(
                classes=classes, n=int(raw["n"]), source=str(raw.get("source", "")),
                class_counts=counts,
                features={str(k): FeatureSummary.from_dict(v)
                          for k, v in dict(raw["features"]).items()},
                probabilities=None if probabilities is None else tuple(
                    FeatureSummary.from_dict(p) for p in probabilities),
                embedding=None if raw.get("embedding") is None
                else EmbeddingSummary.from_dict(raw["embedding"]),
                label_counts=None if labels is None else tuple(int(c) for c in labels),
                accuracy=None if raw.get("accuracy") is None else float(raw["accuracy"]),
                created_at=str(raw.get("created_at", "")))
            if reference.probabilities is not None and len(reference.probabilities) != len(
                    classes):
                raise ValueError("probabilities must have one summary per class")
        except (KeyError, TypeError, ValueError) as exc:
            raise MonitorError(f"the reference statistics are malformed ({exc})",
                               hint="re-export the run with `visiondeck export RUN` to "
                                    "rebuild them") from None
        return reference


def build_reference(*, classes: Sequence[str], widths: Any, heights: Any, brightness: Any,
                    contrast: Any, probabilities: np.ndarray, predicted: Any,
                    labels: Any = None, embeddings: np.ndarray | None = None,
                    basis_embeddings: np.ndarray | None = None, source: str = "val+test",
                    components: int = EMBEDDING_COMPONENTS, passed: Any = None,
                    true_sets: Any = None) -> ReferenceStats:
    """Reference statistics from per-image arrays of the held-out images.

    probabilities: calibrated (N, K); predicted: (N,) class indices as served (the
    Bundle's decision rule); labels: (N,) true indices or None; embeddings: (N, D) of the
    same images, basis_embeddings: (M, D) of other (training) images for the PCA basis.
    Multi-label models: `passed` (N, K) the labels that pass their thresholds, so
    `class_counts` counts each label's positives (`label_rates`), `true_sets` (N, K) the
    true label sets (`label_counts` per label, `accuracy` the whole set right), and
    `predicted` the most probable label (whose probability is the served confidence).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.int64)
    n, k = probabilities.shape
    if n == 0 or k != len(classes):
        raise ValueError("need at least one image and one probability per class")
    features = {name: FeatureSummary.from_values(values) for name, values in
                image_features(widths, heights, brightness, contrast).items()}
    features["confidence"] = FeatureSummary.from_values(
        probabilities[np.arange(n), predicted])
    per_class = None
    if k <= MAX_SOFTMAX_CLASSES:
        per_class = tuple(FeatureSummary.from_values(probabilities[:, j]) for j in range(k))
    embedding = None
    basis = embeddings if basis_embeddings is None or len(basis_embeddings) < 2 \
        else basis_embeddings
    if embeddings is not None and basis is not None and len(basis) >= 2:
        embedding = EmbeddingSummary.fit(
            basis, embeddings, k=components,
            basis_source="train" if basis is basis_embeddings else "reference")
    label_counts = accuracy = None
    if passed is not None:
        passed = np.asarray(passed, dtype=bool)
        class_counts = tuple(int(c) for c in passed.sum(axis=0))
        if true_sets is not None:
            true_sets = np.asarray(true_sets, dtype=bool)
            label_counts = tuple(int(c) for c in true_sets.sum(axis=0))
            accuracy = round(float((true_sets == passed).all(axis=1).mean()), 6)
    else:
        class_counts = tuple(int(c) for c in np.bincount(predicted, minlength=k))
    if passed is None and labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        label_counts = tuple(int(c) for c in np.bincount(labels, minlength=k))
        accuracy = round(float((labels == predicted).mean()), 6)
    return ReferenceStats(
        classes=tuple(classes), n=n, source=source,
        class_counts=class_counts, features=features, probabilities=per_class, embedding=embedding,
        label_counts=label_counts, accuracy=accuracy)


# ------------------------------------------------------------------------ Bundle files


def save_reference(folder: str | os.PathLike[str], reference: ReferenceStats
                   ) -> dict[str, Any]:
    """Write `folder/reference.json`; returns the entry to put under bundle.json "reference"."""
    text = json.dumps(reference.to_dict(), separators=(",", ":"), allow_nan=False)
    path = Path(folder) / REFERENCE_FILE
    atomic_write_text(path, text + "\n")
    return {"file": REFERENCE_FILE, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "id": reference.id, "n": reference.n, "source": reference.source,
            "features": sorted(reference.features)
            + (["softmax"] if reference.probabilities is not None else [])
            + (["embedding"] if reference.embedding is not None else [])}


def load_reference(bundle: Any) -> ReferenceStats | None:
    """The reference of a loaded Bundle (anything with `.path` and `.info`), or None when
    it was exported before monitoring existed. A damaged file is a `MonitorError`."""
    entry = (getattr(bundle, "info", None) or {}).get("reference")
    if entry is None:
        return None
    file = entry.get("file") if isinstance(entry, Mapping) else None
    if not isinstance(file, str) or file in ("", ".", "..") or "/" in file or "\\" in file:
        raise MonitorError("bundle.json's reference entry does not name a file in the Bundle",
                           hint="re-export the run with `visiondeck export RUN`")
    path = Path(bundle.path) / file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MonitorError(f"cannot read the reference statistics {path} ({exc.strerror})",
                           hint="copy the whole Bundle folder, or re-export the run") from None
    digest = entry.get("sha256")
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise MonitorError(f"{path} does not match the SHA-256 in bundle.json",
                           hint="the file was changed after export; re-export the run")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MonitorError(f"{path} is not valid JSON ({exc})",
                           hint="re-export the run with `visiondeck export RUN`") from None
    return ReferenceStats.from_dict(raw)
