"""The data side of training: a saved split becomes train/val/test loaders.

Two paths, chosen by `data.cache`: small decoded sets live in memory as uint8 tensors and are
augmented per batch on the training device (`train.augment`); large ones stream from disk
through DataLoader workers with per-sample torchvision augmentation. Both decode through
`visiondeck.imaging` and resize with the same function serving uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from visiondeck.config import DataConfig, TrainConfig
from visiondeck.data.cache import cache_bytes, decode_records
from visiondeck.data.catalog import decode_limits, default_workers
from visiondeck.data.dataset import (
    ImageFileDataset,
    PrepareSpec,
    class_balanced_sampler,
    collate_skip_bad,
    rare_label_sampler,
)
from visiondeck.data.multilabel import label_matrix
from visiondeck.data.split import Split, SplitRecord
from visiondeck.data.transforms import build_augment
from visiondeck.train.augment import BatchAugment, Normalize

__all__ = ["SplitDataModule", "resolve_spec"]


def resolve_spec(cfg: DataConfig, model_mean: tuple[float, ...] | None,
                 model_std: tuple[float, ...] | None) -> PrepareSpec:
    """Normalisation: the recipe's, else what the model's pretrained weights expect, else 0.5."""
    mean = cfg.mean or model_mean or (0.5,)
    std = cfg.std or model_std or (0.5,)
    return PrepareSpec(cfg.image_size, cfg.channels, cfg.resize, tuple(mean), tuple(std))


@dataclass
class _Subsets:
    train: list[SplitRecord]
    val: list[SplitRecord]
    test: list[SplitRecord]


class SplitDataModule(L.LightningDataModule):
    def __init__(self, split: Split, data: DataConfig, train: TrainConfig, spec: PrepareSpec, *,
                 cache_dir: Path | None = None, test_split: Split | None = None,
                 fold: int | None = None, progress: bool = True) -> None:
        super().__init__()
        self.split = split
        self.test_split = test_split
        self.data_cfg = data
        self.train_cfg = train
        self.spec = spec
        self.cache_dir = cache_dir
        self.progress = progress
        self.classes = split.classes
        if fold is None:
            self.subsets = _Subsets(split.subset("train"), split.subset("val"),
                                    (test_split or split).subset("test"))
        else:
            train_records, val_records = split.fold(fold)
            self.subsets = _Subsets(train_records, val_records, split.subset("test"))
        if not self.subsets.train:
            raise ValueError("the split has no training files")
        self.normalize = Normalize(spec.mean, spec.std, spec.channels)
        self.batch_augment = BatchAugment(data.augment, spec.image_size, flip=data.flip)
        self.in_memory = self._decide_cache()
        self.decode_failures: list[str] = []
        self._sets: dict[str, torch.utils.data.Dataset] = {}

    # --------------------------------------------------------------- decisions
    def _decide_cache(self) -> bool:
        mode = self.data_cfg.cache
        if mode != "auto":
            return mode == "memory"
        total = sum(len(s) for s in (self.subsets.train, self.subsets.val, self.subsets.test))
        size = cache_bytes(total, self.spec.channels, self.spec.image_size)
        return size <= self.data_cfg.cache_max_gb * 1024**3

    @property
    def train_labels(self) -> np.ndarray:
        if self.multilabel:  # (N, K) 0/1
            return label_matrix([r.label for r in self.subsets.train], self.classes)
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[r.label] for r in self.subsets.train], dtype=np.int64)

    @property
    def multilabel(self) -> bool:
        return self.split.multilabel

    # --------------------------------------------------------------- datasets
    def setup(self, stage: str | None = None) -> None:
        if self._sets:
            return
        for name in ("train", "val", "test"):
            records = getattr(self.subsets, name)
            root = (self.test_split.root if name == "test" and self.test_split
                    else self.split.root)
            self._sets[name] = self._dataset(name, root, records)

    def _dataset(self, name: str, root: Path, records: list[SplitRecord]):
        limits = decode_limits(self.data_cfg)
        if self.in_memory:
            arrays = decode_records(
                root, records, self.classes, image_size=self.spec.image_size,
                channels=self.spec.channels, resize=self.spec.resize, limits=limits,
                cache_dir=self.cache_dir, workers=self.data_cfg.num_workers,
                progress=self.progress, multilabel=self.multilabel,
            )
            self.decode_failures.extend(arrays.failed)
            return TensorDataset(torch.from_numpy(arrays.images),
                                 torch.from_numpy(arrays.labels))
        augment = build_augment(self.data_cfg.augment, self.spec.image_size,
                                flip=self.data_cfg.flip)
        return ImageFileDataset(root, records, self.classes, self.spec,
                                augment=augment if name == "train" else None, limits=limits,
                                multilabel=self.multilabel)

    # --------------------------------------------------------------- loaders
    def _loader(self, name: str, *, train: bool) -> DataLoader:
        dataset = self._sets[name]
        sampler = None
        if train and self.train_cfg.balance == "sampler":
            labels = (dataset.tensors[1].numpy() if isinstance(dataset, TensorDataset)
                      else dataset.labels)
            sampler = (rare_label_sampler(labels, seed=self.train_cfg.seed) if self.multilabel
                       else class_balanced_sampler(labels, seed=self.train_cfg.seed))
        workers = 0 if self.in_memory else (self.data_cfg.num_workers
                                            if self.data_cfg.num_workers is not None
                                            else default_workers())
        return DataLoader(
            dataset, batch_size=self.train_cfg.batch_size,
            shuffle=train and sampler is None, sampler=sampler,
            drop_last=train and len(dataset) > self.train_cfg.batch_size,
            num_workers=workers, persistent_workers=workers > 0,
            collate_fn=None if self.in_memory else collate_skip_bad,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val" if self.subsets.val else "test", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def device_transform(self, train: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        """What the model applies to a batch once it is on the device."""
        if not self.in_memory:
            return lambda x: x  # already augmented and normalised per sample
        if train:
            return lambda x: self.normalize(self.batch_augment(x.float().div_(255.0)))
        return self.normalize
