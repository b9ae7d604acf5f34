"""Torch datasets over a saved split, decoding through the one safe decoder.

A file that turns bad between validation and training (deleted, overwritten, truncated by a
sync tool) must never stop a long run: its sample becomes `None`, `collate_skip_bad` drops it
from the batch and counts it, and the trainer reports the count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from visiondeck.config import DataConfig
from visiondeck.data.catalog import decode_limits
from visiondeck.data.multilabel import label_matrix
from visiondeck.data.split import Split, SplitRecord
from visiondeck.data.transforms import build_augment, normalize
from visiondeck.imaging import DecodeLimits, ImageDecodeError, decode_image, resize_image

__all__ = [
    "Batch",
    "ImageFileDataset",
    "PrepareSpec",
    "class_balanced_sampler",
    "collate_skip_bad",
    "datasets_from_split",
    "rare_label_sampler",
]

# used when neither the recipe nor the model gives normalisation statistics
DEFAULT_MEAN = (0.5,)
DEFAULT_STD = (0.5,)


@dataclass(frozen=True)
class PrepareSpec:
    """Deterministic preparation of an input: what `bundle.json` will record for serving."""

    image_size: int
    channels: int
    resize: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_config(cls, cfg: DataConfig) -> PrepareSpec:
        return cls(cfg.image_size, cfg.channels, cfg.resize,
                   tuple(cfg.mean or DEFAULT_MEAN), tuple(cfg.std or DEFAULT_STD))


class Batch(NamedTuple):
    images: torch.Tensor
    labels: torch.Tensor
    skipped: int


class ImageFileDataset(Dataset):
    """(image tensor, label index) pairs for split records under `root`."""

    def __init__(
        self,
        root: str | Path,
        records: Sequence[SplitRecord],
        classes: Sequence[str],
        spec: PrepareSpec,
        *,
        augment: Callable | None = None,
        limits: DecodeLimits | None = None,
        multilabel: bool = False,
    ) -> None:
        self.root = Path(root)
        self.paths = [r.relpath for r in records]
        index = {c: i for i, c in enumerate(classes)}
        # multi-label: a (N, K) 0/1 matrix, one row per file (see `data.multilabel`)
        self.labels = (label_matrix([r.label for r in records], classes) if multilabel
                       else np.array([index[r.label] for r in records], dtype=np.int64))
        self.spec = spec
        self.augment = augment
        self.limits = limits or decode_limits()
        self._mode = "L" if spec.channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        try:
            decoded = decode_image(self.root / self.paths[i], mode=self._mode, limits=self.limits)
        except (ImageDecodeError, OSError):  # bad bytes, or the file vanished since the split
            return None
        array = resize_image(decoded.array, self.spec.image_size, self.spec.resize)
        if self.augment is not None:
            tensor = self.augment(torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))))
            array = tensor.numpy().transpose(1, 2, 0)
        x = torch.from_numpy(normalize(array, self.spec.mean, self.spec.std))
        label = self.labels[i]
        return x, (torch.from_numpy(label.copy()) if label.ndim else int(label))


def collate_skip_bad(samples: list[tuple[torch.Tensor, int] | None]) -> Batch:
    """Stack the good samples and count the bad ones (never raises for a bad file)."""
    good = [s for s in samples if s is not None]
    skipped = len(samples) - len(good)
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), skipped)
    images = torch.stack([s[0] for s in good])
    if isinstance(good[0][1], torch.Tensor):  # multi-label rows
        return Batch(images, torch.stack([s[1] for s in good]), skipped)
    labels = torch.tensor([s[1] for s in good], dtype=torch.long)
    return Batch(images, labels, skipped)


def class_balanced_sampler(labels: Sequence[int] | np.ndarray, *, seed: int = 0,
                           num_samples: int | None = None) -> WeightedRandomSampler:
    """Draw each class equally often (with replacement), whatever its share of the data.

    Each epoch's draws depend on (seed, epoch) alone: Lightning calls `set_epoch` at every
    epoch, as for a DistributedSampler. A generator advanced from epoch to epoch would make
    a resumed run (whose generator starts afresh) draw another order than the run it
    continues.
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    return _EpochSeededSampler(torch.as_tensor(weights, dtype=torch.double),
                               num_samples or len(labels), seed=seed)


def rare_label_sampler(matrix: np.ndarray, *, seed: int = 0,
                       num_samples: int | None = None) -> WeightedRandomSampler:
    """Multi-label: draw each file as often as its rarest label asks (weight = 1 / files of
    its rarest label; files without a label form a category of their own), so a label
    carried by a few files is seen about as often as a common one. Epoch-seeded like
    `class_balanced_sampler`."""
    matrix = np.asarray(matrix, dtype=bool)
    counts = matrix.sum(axis=0).astype(np.float64)
    inverse = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
    weights = (matrix * inverse[None, :]).max(axis=1) if matrix.shape[1] else np.zeros(len(matrix))
    empty = ~matrix.any(axis=1)
    if empty.any():
        weights[empty] = 1.0 / empty.sum()
    return _EpochSeededSampler(torch.as_tensor(weights, dtype=torch.double),
                               num_samples or len(matrix), seed=seed)


class _EpochSeededSampler(WeightedRandomSampler):
    def __init__(self, weights: torch.Tensor, num_samples: int, *, seed: int) -> None:
        super().__init__(weights, num_samples, replacement=True)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):  # type: ignore[no-untyped-def]
        self.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return super().__iter__()


def datasets_from_split(split: Split, cfg: DataConfig) -> dict[str, ImageFileDataset]:
    """train (augmented) / val / test datasets of a saved split, prepared per the recipe."""
    spec = PrepareSpec.from_config(cfg)
    limits = decode_limits(cfg)
    augment = build_augment(cfg.augment, cfg.image_size)
    return {
        subset: ImageFileDataset(
            split.root, split.subset(subset), split.classes, spec,
            augment=augment if subset == "train" else None, limits=limits,
            multilabel=split.multilabel,
        )
        for subset in ("train", "val", "test")
    }
