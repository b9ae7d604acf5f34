"""Building blocks shared by VisionDeck's own networks.

`VisionDeckNet` gives our networks timm's small interface (`forward_features`,
`forward_head`, `get_classifier`, `reset_classifier`) plus the two answers the transfer-
learning helpers need (`backbone_stages`, `gradcam_layer`), so the trainer, Grad-CAM and
export treat ours and timm's models alike.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["AdaptiveAvgPool2dExportable", "VisionDeckNet", "conv_bn_relu"]


def conv_bn_relu(in_chans: int, out_chans: int, *, bias: bool = False) -> nn.Sequential:
    """3x3 conv (same padding) + BatchNorm + ReLU: the only compute block we use.

    Plain ops on purpose: they fuse under ONNX Runtime / oneDNN, quantise to int8 and run
    fast in channels_last.
    """
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=bias),
            bn=nn.BatchNorm2d(out_chans),
            act=nn.ReLU(inplace=True),
        )
    )


class AdaptiveAvgPool2dExportable(nn.Module):
    """`nn.AdaptiveAvgPool2d(size)` that also exports to ONNX when the size does not divide.

    The ONNX exporter can only write adaptive average pooling as a fixed AveragePool, which
    needs the input side to be a multiple of the output side (true at 32 px for the seed
    model, false at 28 px). For the other sizes the same bins (PyTorch's floor/ceil rule) are
    written as two small averaging matrices, `P_h @ x @ P_w^T`: a MatMul any exporter takes.
    """

    def __init__(self, output_size: int) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            # ONNX export traces at one input size; the bins are constants of that size.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                return self._pool(x, int(x.shape[-2]), int(x.shape[-1]))
        return self._pool(x, int(x.shape[-2]), int(x.shape[-1]))

    def _pool(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        out = self.output_size
        if height % out == 0 and width % out == 0:
            return F.adaptive_avg_pool2d(x, out)
        rows = self._bins(height, x)
        cols = self._bins(width, x)
        return rows @ x @ cols.transpose(0, 1)

    def _bins(self, size: int, like: torch.Tensor) -> torch.Tensor:
        # Built from Python numbers so that tracing records one constant, not a loop of ops.
        out = self.output_size
        rows = []
        for i in range(out):
            start, end = (i * size) // out, -(-((i + 1) * size) // out)  # floor, ceil
            rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(size)])
        return torch.tensor(rows, dtype=like.dtype, device=like.device)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class VisionDeckNet(nn.Module):
    """Common interface of our networks (timm's, plus stage and Grad-CAM layer lists)."""

    num_classes: int
    num_features: int  # channels of the last feature map
    head_hidden_size: int  # width the classifier reads (== num_features unless an MLP head)
    stages: nn.Sequential

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh final layer for `num_classes` (0 = no classifier, as in timm)."""
        del global_pool  # accepted for timm compatibility; our pooling is fixed
        self.num_classes = num_classes
        self.fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes else nn.Identity()

    def backbone_stages(self) -> list[nn.Module]:
        """Everything but the classifier, split into stages, input side first."""
        raise NotImplementedError

    def gradcam_layer(self) -> nn.Module:
        """The last convolutional stage: the feature map the head pools."""
        return self.stages[-1]
