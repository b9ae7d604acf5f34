"""The seam between training and experiment tracking.

Training must not know MLflow (MLflow lives in `visiondeck.registry`), yet every epoch's
metrics should reach the tracker as they happen, not after the run. So the trainer accepts any
object that follows `Tracker`, and `TrackerCallback` forwards Lightning's events to it. The CLI
and the pipeline pass `visiondeck.registry.tracking`'s MLflow tracker; notebooks can pass their
own or none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning as L
import torch

__all__ = ["Tracker", "TrackerCallback"]


@runtime_checkable
class Tracker(Protocol):
    def start(self, run_dir: Path, recipe: Any, *, resumed: bool) -> None:
        """The run begins (or resumes): log params, tags, the recipe."""

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """One finished epoch's scalar metrics (train and validation)."""

    def finish(self, run_dir: Path, status: str, metrics: dict[str, float]) -> None:
        """The run ended: final metrics, artifacts from the run folder, the status."""


class TrackerCallback(L.Callback):
    """Forwards each validated epoch's metrics to a `Tracker` (rank zero only)."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if torch.as_tensor(v).numel() == 1}
        self.tracker.log_epoch(trainer.current_epoch, metrics)
