"""Run a network over a split's files, prepared exactly as training prepared them.

Files are decoded and resized by `data.cache.decode_records` (the function the in-memory
training path uses, with the run's decoder limits, reusing its on-disk cache when the same
files were decoded before) and normalised with `data.transforms.normalize`'s arithmetic.
A file that no longer decodes is left out and listed, never a crash.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visiondeck.data.split import Split, SplitRecord
from visiondeck.errors import VisionDeckError

__all__ = ["EvaluationError", "Predictions", "decode_subset", "predict_arrays",
           "predict_run_subsets", "run_fold", "run_subsets"]


class EvaluationError(VisionDeckError):
    exit_code = 5


@dataclass
class Predictions:
    """Raw logits of one subset with the true labels, in the split's file order."""

    logits: np.ndarray  # float32 (N, K)
    labels: np.ndarray  # int64 (N,); multi-label: uint8 (N, K) 0/1
    relpaths: list[str]
    root: Path
    skipped: list[str] = field(default_factory=list)
    images: np.ndarray | None = None  # uint8 (N, C, H, W), kept for galleries

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _per_channel(values: Sequence[float], channels: int) -> np.ndarray:
    values = list(values)
    if len(values) == 1:
        values = values * channels
    elif channels == 1 and len(values) == 3:
        values = [float(np.mean(values))]
    return np.asarray(values, dtype=np.float32).reshape(1, channels, 1, 1)


def predict_arrays(model: Any, images: np.ndarray, spec: Any, *, batch_size: int = 256,
                   tta: bool = False) -> np.ndarray:
    """uint8 (N, C, H, W) → float32 logits (N, K); `tta` averages with the mirror image.

    Normalisation is `transforms.normalize` vectorised: x / 255, minus mean, over std.
    """
    import torch

    mean = _per_channel(spec.mean, spec.channels)
    std = _per_channel(spec.std, spec.channels)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    model.eval()
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size].astype(np.float32) * (1.0 / 255.0)
            x = torch.from_numpy((chunk - mean) / std).to(device)
            logits = model(x).float()
            if tta:
                logits = (logits + model(torch.flip(x, dims=[3])).float()) / 2.0
            outputs.append(logits.cpu().numpy())
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(outputs).astype(np.float32)


def decode_subset(root: Path, records: list[SplitRecord], classes: list[str], spec: Any, *,
                  limits: Any, cache_dir: Path | None, workers: int | None = None,
                  multilabel: bool = False) -> Any:
    from visiondeck.data.cache import decode_records

    return decode_records(root, records, classes, image_size=spec.image_size,
                          channels=spec.channels, resize=spec.resize, limits=limits,
                          cache_dir=cache_dir, workers=workers, multilabel=multilabel)


def _predict_records(model: Any, spec: Any, root: Path, records: list[SplitRecord],
                     classes: list[str], *, limits: Any, cache_dir: Path | None, tta: bool,
                     batch_size: int, workers: int | None,
                     multilabel: bool = False) -> Predictions:
    arrays = decode_subset(root, records, classes, spec, limits=limits, cache_dir=cache_dir,
                           workers=workers, multilabel=multilabel)
    logits = predict_arrays(model, arrays.images, spec, batch_size=batch_size, tta=tta)
    if not len(arrays.labels):
        logits = np.zeros((0, len(classes)), dtype=np.float32)
    return Predictions(logits, arrays.labels, list(arrays.relpaths), Path(root),
                       list(arrays.failed), arrays.images)


def run_fold(run_dir: Path) -> int | None:
    """The cross-validation fold a run trained on (written by `evaluate.cv`), if any."""
    info = json.loads((Path(run_dir) / "run.json").read_text())
    fold = info.get("fold")
    return int(fold) if fold is not None else None


def run_subsets(run_dir: Path, split: Split, test_split: Split | None
                ) -> dict[str, tuple[Path, list[SplitRecord]]]:
    """{"val": (root, records), "test": (root, records)} as the run held them out."""
    fold = run_fold(run_dir)
    val = split.fold(fold)[1] if fold is not None else split.subset("val")
    test_source = test_split or split
    return {"val": (split.root, val), "test": (test_source.root, test_source.subset("test"))}


def predict_run_subsets(trained: Any, *, tta: bool = False, batch_size: int = 256,
                        workers: int | None = None, names: Sequence[str] = ("val", "test")
                        ) -> dict[str, Predictions]:
    """Logits of the run's validation and test files (decoded with the run's limits)."""
    from visiondeck.data.catalog import decode_limits
    from visiondeck.train.artifacts import load_run_splits

    split, test_split = load_run_splits(trained.run_dir)
    info = json.loads((Path(trained.run_dir) / "run.json").read_text())
    prepared = (info.get("split") or {}).get("prepared")
    limits = decode_limits(trained.recipe.data if trained.recipe else None)
    subsets = run_subsets(Path(trained.run_dir), split, test_split)
    result: dict[str, Predictions] = {}
    for name in names:
        root, records = subsets[name]
        if not records:
            raise EvaluationError(f"the run's split has no {name} files",
                                  hint="split with data.val_fraction/data.test_fraction > 0")
        # the folder training decoded into: the same files come back from its cache
        cache = Path(prepared) / "cache" if prepared else None
        result[name] = _predict_records(trained.model, trained.spec, Path(root), records,
                                        split.classes, limits=limits, cache_dir=cache, tta=tta,
                                        batch_size=batch_size, workers=workers,
                                        multilabel=split.multilabel)
    return result
