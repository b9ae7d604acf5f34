"""CBAM: channel then spatial attention (Woo et al., "CBAM: Convolutional Block Attention
Module", ECCV 2018), and the one place that knows how to add it to a ResNet.

Written with plain reductions (`mean`/`amax`) instead of adaptive pooling so that the ONNX
graph is ReduceMean/ReduceMax + Conv + Sigmoid at any input size, and so that it works on
channels_last tensors without copies.
"""

from __future__ import annotations

import torch
from torch import nn

from visiondeck.models.errors import ModelError

__all__ = ["CBAM", "ChannelAttention", "SpatialAttention", "add_cbam_to_resnet", "is_resnet_family"]


class ChannelAttention(nn.Module):
    """Which channels matter: a shared MLP over average- and max-pooled descriptors."""

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8) -> None:
        super().__init__()
        hidden = max(min_hidden, channels // reduction)
        # 1x1 convolutions == a per-pixel MLP; they keep the (N, C, 1, 1) layout for export.
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = x.mean(dim=(2, 3), keepdim=True)
        peak = x.amax(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.mlp(avg) + self.mlp(peak))


class SpatialAttention(nn.Module):
    """Where to look: a 7x7 convolution over the channel-wise mean and max maps."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Channel attention followed by spatial attention, each a multiplicative gate."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel(x)
        return x * self.spatial(x)


_RESNET_LAYERS = ("layer1", "layer2", "layer3", "layer4")


def is_resnet_family(model: nn.Module) -> bool:
    """timm `ResNet` (resnet*, resnext*, seresnet*, ...) or torchvision `ResNet`."""
    return type(model).__name__ == "ResNet" and all(
        isinstance(getattr(model, name, None), nn.Sequential) for name in _RESNET_LAYERS
    )


def _out_channels(layer: nn.Sequential) -> int:
    norms = [m for m in layer.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ModelError("cannot find the output width of a ResNet stage (no BatchNorm)")
    return norms[-1].num_features


def add_cbam_to_resnet(model: nn.Module, name: str = "model") -> nn.Module:
    """Append a CBAM block to each of `layer1..layer4`, in place; returns the model.

    The block is *appended* to each stage's `nn.Sequential` (as `layerN.cbam`), so every
    existing state-dict key stays as it was: ImageNet checkpoints still load, and only the
    new `*.cbam.*` weights start fresh. Other families: `attention.add_attention`.
    """
    if not is_resnet_family(model):
        raise ModelError(
            f"add_cbam_to_resnet needs a ResNet-family model, not {name}",
            hint="use visiondeck.models.attention.add_attention for other backbones",
        )
    for layer_name in _RESNET_LAYERS:
        layer = getattr(model, layer_name)
        if "cbam" not in layer._modules:
            layer.add_module("cbam", CBAM(_out_channels(layer)))
    return model
