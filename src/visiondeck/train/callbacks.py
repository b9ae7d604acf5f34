"""Callbacks with state that survives a resume, and atomic checkpoint writes.

A killed run must lose at most the epoch in progress: checkpoints are written to a temporary
file and renamed (a crash mid-write leaves the previous checkpoint intact), and the RNG
states travel inside the checkpoint so a resumed run draws the same augmentations and batch
orders it would have drawn without the interruption.
"""

from __future__ import annotations

import csv
import json
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from visiondeck._files import atomic_write_json, atomic_writer

__all__ = ["AtomicCheckpointIO", "EpochMetrics", "HistoryWriter", "RngState"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a private temporary, fsync, then rename over `NAME` (`_files.atomic_writer`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path, binary=True) as handle:
            torch.save(checkpoint, handle)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None):
        # never unpickle: our checkpoints hold only tensors, numbers, strings and containers
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class RngState(L.Callback):
    """Saves and restores Python, NumPy and torch RNG states with every checkpoint."""

    def state_dict(self) -> dict[str, Any]:
        # plain tensors and ints only, so checkpoints load with torch.load(weights_only=True)
        version, internal, gauss = random.getstate()
        _, keys, pos, has_gauss, cached = np.random.get_state()
        return {
            "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
            "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
        keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if state.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class EpochMetrics(L.Callback):
    """The last finished epoch's metrics, carried inside every checkpoint.

    A run killed after its last checkpoint but before run.json was finalised resumes into a
    fit that runs no epoch, so `trainer.callback_metrics` is empty there; the outcome must
    then be read from the checkpoint, or run.json would lose every metric but the best score.
    """

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._restored: dict[str, float] = {}
        self._epochs_here = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epochs_here += 1

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a checkpoint saved on validation end (validation every n > 1 epochs) comes first
        if not trainer.sanity_checking:
            self._epochs_here += 1

    def state_dict(self) -> dict[str, Any]:
        # called while a checkpoint is written, i.e. once the epoch's metrics are all logged
        return {"metrics": self.current()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restored = {str(k): float(v) for k, v in (state.get("metrics") or {}).items()}

    def current(self) -> dict[str, float]:
        """This process's latest metrics, or the checkpoint's when no epoch ran here."""
        if self._trainer is None or not self._epochs_here:
            return dict(self._restored)
        return {k: float(v) for k, v in self._trainer.callback_metrics.items()
                if torch.as_tensor(v).numel() == 1}


class HistoryWriter(L.Callback):
    """One row per epoch in history.csv and history.json (what the report plots later).

    On resume the rows already on disk up to the restored epoch are kept, so the history of
    an interrupted run reads as if it had never stopped.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.rows: list[dict[str, float]] = []
        self._start = time.perf_counter()
        self._elapsed_before = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": self._elapsed()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._elapsed_before = float(state.get("elapsed", 0.0))
        self._start = time.perf_counter()

    def _elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._start

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        existing = self.run_dir / "history.json"
        if trainer.current_epoch and existing.exists():
            rows = json.loads(existing.read_text())
            self.rows = [r for r in rows if r["epoch"] <= trainer.current_epoch]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k in (*_KEPT, *_MULTILABEL_KEPT) and torch.as_tensor(v).numel() == 1}
        lrs = [g["lr"] for g in trainer.optimizers[0].param_groups] if trainer.optimizers else []
        row = {"epoch": trainer.current_epoch + 1, "step": trainer.global_step,
               "time_s": round(self._elapsed(), 2), **metrics,
               "lr": max(lrs) if lrs else float("nan")}
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        self._write()

    def _write(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        extra = [k for k in _MULTILABEL_KEPT if any(k in r for r in self.rows)]
        columns = ["epoch", "step", "time_s", *_KEPT, *extra, "lr"]
        with atomic_writer(self.run_dir / "history.csv", newline="") as handle:
            writer = csv.DictWriter(handle, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
        # a resume reads history.json back (on_train_start): never half a file
        atomic_write_json(self.run_dir / "history.json", self.rows, indent=1)


_KEPT = ("train_loss_epoch", "train_acc", "val_loss", "val_acc", "skipped_files")
#: what multi-label runs log instead of accuracy (columns only in their history)
_MULTILABEL_KEPT = ("val_map", "val_map_micro", "val_f1")
