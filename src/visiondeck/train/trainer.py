"""The Lightning *engineering*: devices, precision, checkpoints, loggers, callbacks.

Kept apart from the system (`module`) so one recipe runs on a laptop CPU, one GPU, or DDP
over several processes and nodes by changing `train.devices` / `train.num_nodes` only.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    EarlyStopping,
    EMAWeightAveraging,
    ModelCheckpoint,
    RichProgressBar,
)
from lightning.pytorch.loggers import TensorBoardLogger

from visiondeck.config import TrainConfig
from visiondeck.train.callbacks import (
    AtomicCheckpointIO,
    EpochMetrics,
    HistoryWriter,
    RngState,
)

__all__ = ["build_trainer", "resolve_precision"]


def resolve_precision(cfg: TrainConfig) -> str:
    """`auto`: bf16/fp16 mixed precision on a GPU that supports it, full precision on CPU
    (CPU autocast is slower than fp32 for the small convolutions VisionDeck trains)."""
    if cfg.precision != "auto":
        return "32-true" if cfg.precision == "32" else cfg.precision
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def build_trainer(cfg: TrainConfig, run_dir: Path, *, progress: bool = True,
                  extra_callbacks: list | None = None, max_steps: int | None = None,
                  monitor: str = "val_acc") -> L.Trainer:
    """`monitor`: the validation metric (higher is better) that picks the best checkpoint
    and stops early (`Classifier.monitor`: val_map for multi-label runs)."""
    best = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor=monitor, mode="max",
        save_top_k=1, every_n_epochs=1, enable_version_counter=False,
    )
    # A checkpoint of its own for "last": Lightning 2.6 writes save_last only in the epochs
    # where the monitored metric improved, but a killed run must lose one epoch at most.
    last = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
        every_n_epochs=1, enable_version_counter=False,
    )
    callbacks: list = [best, last, RngState(), HistoryWriter(run_dir), EpochMetrics()]
    if cfg.patience:
        callbacks.append(EarlyStopping(monitor, mode="max", patience=cfg.patience))
    if cfg.ema:
        callbacks.append(EMAWeightAveraging(decay=cfg.ema))
    if progress:
        callbacks.append(RichProgressBar(leave=True))
    callbacks.extend(extra_callbacks or [])
    strategy = "ddp" if cfg.devices * cfg.num_nodes > 1 else "auto"
    return L.Trainer(
        default_root_dir=run_dir,
        max_epochs=cfg.epochs,
        max_steps=max_steps or -1,
        max_time=timedelta(minutes=cfg.max_minutes) if cfg.max_minutes else None,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=strategy,
        precision=resolve_precision(cfg),
        gradient_clip_val=cfg.grad_clip,
        accumulate_grad_batches=cfg.accumulate,
        deterministic=cfg.deterministic,
        callbacks=callbacks,
        logger=TensorBoardLogger(run_dir, name="tensorboard", version=""),
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=progress,
        enable_model_summary=progress,
        num_sanity_val_steps=0,
        log_every_n_steps=10,
    )
