"""The Lightning *system*: steps, loss, metrics and optimisers around a plain network.

Engineering (devices, precision, checkpoints, loggers) belongs to the Trainer built in
`runner`; the network itself is a plain `nn.Module` from `visiondeck.models`, so export and
serving never need Lightning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from visiondeck.config import TrainConfig
from visiondeck.train.augment import mix_batch
from visiondeck.train.losses import build_loss

__all__ = ["MULTILABEL_MONITOR", "Classifier"]

#: the metric that picks the best epoch (and early stopping, plateau) of a multi-label run
MULTILABEL_MONITOR = "val_map"

Transform = Callable[[torch.Tensor], torch.Tensor]


class Classifier(L.LightningModule):
    def __init__(self, model: nn.Module, num_classes: int, cfg: TrainConfig, *,
                 class_weights: Sequence[float] | None = None,
                 train_transform: Transform | None = None,
                 eval_transform: Transform | None = None, multilabel: bool = False) -> None:
        """`multilabel`: `num_classes` independent labels (sigmoid per logit, targets (N, K)
        0/1); `class_weights` are then per-label n_neg/n_pos (`losses.label_pos_weights`),
        and validation reports mAP (macro, the checkpoint metric `val_map`, and micro) and
        macro F1 at 0.5 instead of accuracy."""
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.cfg = cfg
        self.multilabel = multilabel
        self.binary = _has_binary_head(model)
        if multilabel and self.binary:
            from visiondeck.errors import ConfigError

            raise ConfigError("model.head=binary is for two-class single-label data",
                              hint="multi-label data takes the default head (one logit per "
                                   "label, each read through a sigmoid)")
        self.loss = build_loss(cfg, class_weights, binary=self.binary, multilabel=multilabel)
        self.eval_loss = nn.BCEWithLogitsLoss() if multilabel else nn.CrossEntropyLoss()
        self.train_transform = train_transform or (lambda x: x)
        self.eval_transform = eval_transform or (lambda x: x)
        if multilabel:
            from torchmetrics.classification import MultilabelAveragePrecision, MultilabelF1Score

            self.val_map = MultilabelAveragePrecision(num_classes, average="macro")
            self.val_map_micro = MultilabelAveragePrecision(num_classes, average="micro")
            self.val_f1 = MultilabelF1Score(num_classes, average="macro")
        else:
            self.val_acc = MulticlassAccuracy(num_classes, average="micro")
            self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self._unfrozen = 0

    @property
    def monitor(self) -> str:
        """The validation metric that picks the best epoch (higher is better)."""
        return MULTILABEL_MONITOR if self.multilabel else "val_acc"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ----------------------------------------------------------------- batches
    @staticmethod
    def _unpack(batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        if hasattr(batch, "skipped"):
            return batch.images, batch.labels, int(batch.skipped)
        images, labels = batch
        return images, labels, 0

    def _prepare(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        x = (self.train_transform if train else self.eval_transform)(x)
        if self.cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        x, y, skipped = self._unpack(batch)
        # summed over the epoch by Lightning, so the count is in callback_metrics when the
        # history callback writes the epoch's row (an on_train_epoch_end log of the module
        # came after it: each row held the previous epoch's count), and nothing of it has to
        # survive a resume
        self.log("skipped_files", float(skipped), on_step=False, on_epoch=True,
                 reduce_fx="sum", sync_dist=True, batch_size=max(1, len(y)))
        if y.numel() == 0:
            return None  # every file of this batch went bad: nothing to learn from
        x = self._prepare(x, train=True)
        x, target = mix_batch(x, y, self.num_classes, mixup=self.cfg.mixup,
                              cutmix=self.cfg.cutmix)
        logits = self(x)
        loss = self.loss(logits, target)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=len(y))
        if not self.multilabel:
            self.train_acc(logits.detach(), y)
            self.log("train_acc", self.train_acc, on_step=False, on_epoch=True,
                     batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y, _ = self._unpack(batch)
        if y.numel() == 0:
            return
        logits = self(self._prepare(x, train=False))
        if self.multilabel:
            self._validate_labels(logits, y)
            return
        self.val_acc(logits, y)
        self.log("val_loss", self.eval_loss(logits, y), on_epoch=True, prog_bar=True,
                 batch_size=len(y), sync_dist=True)
        self.log("val_acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=len(y))

    def _validate_labels(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        target = y.long()
        logits = logits.float()
        for metric in (self.val_map, self.val_map_micro, self.val_f1):
            metric(logits, target)
        self.log("val_loss", self.eval_loss(logits, y.float()), on_epoch=True, prog_bar=True,
                 batch_size=len(y), sync_dist=True)
        self.log("val_map", self.val_map, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log("val_map_micro", self.val_map_micro, on_epoch=True, batch_size=len(y))
        self.log("val_f1", self.val_f1, on_epoch=True, batch_size=len(y))

    # ----------------------------------------------------------------- freezing
    def on_train_epoch_start(self) -> None:
        from visiondeck.models import backbone_stages, freeze_backbone, unfreeze_stages

        if self.cfg.freeze == "none":
            return
        if self.current_epoch == 0 or self._unfrozen == 0:
            freeze_backbone(self.model)
        if self.cfg.freeze == "progressive":
            stages = len(backbone_stages(self.model))
            wanted = min(stages, self.current_epoch // self.cfg.unfreeze_every)
            if wanted:
                unfreeze_stages(self.model, wanted)
            self._unfrozen = wanted
        self._frozen_bn_eval()

    def _frozen_bn_eval(self) -> None:
        """BatchNorm in frozen layers keeps its pretrained statistics."""
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in module.parameters(recurse=False)
            ):
                module.eval()

    # ----------------------------------------------------------------- optimisers
    def configure_optimizers(self):
        cfg = self.cfg
        groups = self._param_groups()
        if cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
        elif cfg.optimizer == "adam":
            optimizer = torch.optim.Adam(groups, lr=cfg.lr)
        else:
            optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        if cfg.scheduler == "none":
            return optimizer
        if cfg.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max",
                                                                   factor=0.3, patience=2)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "monitor": self.monitor}}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if cfg.scheduler == "onecycle" and total >= 8:  # one-cycle needs a few steps per phase
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=[g["lr"] for g in groups], total_steps=total,
                pct_start=0.25, div_factor=20.0, final_div_factor=200.0,
            )
        else:  # cosine (also the fallback for runs too short for one-cycle)
            warmup = int(total * cfg.warmup_epochs / max(1, cfg.epochs))
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(total, warmup))
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _param_groups(self) -> list[dict]:
        cfg = self.cfg
        if cfg.backbone_lr_mult < 1.0 or cfg.freeze != "none":
            from visiondeck.models import param_groups

            return param_groups(self.model, cfg.lr, backbone_lr_mult=cfg.backbone_lr_mult,
                                weight_decay=cfg.weight_decay)
        decay, no_decay = [], []
        for param in self.model.parameters():
            (no_decay if param.ndim <= 1 else decay).append(param)
        return [{"params": decay, "weight_decay": cfg.weight_decay, "lr": cfg.lr},
                {"params": no_decay, "weight_decay": 0.0, "lr": cfg.lr}]


def _has_binary_head(model: nn.Module) -> bool:
    """A `model.head=binary` network (one logit, returned as two-class logits)."""
    from visiondeck.models.binary import BinaryLogit

    return any(isinstance(m, BinaryLogit) for m in model.modules())


def _cosine(total: int, warmup: int) -> Callable[[int], float]:
    import math

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
