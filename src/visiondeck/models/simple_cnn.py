"""`simple_cnn`: the CIFAR-10 seed model, kept exactly so its results stay comparable.

Three blocks of 3x3 conv (in→32→64→128) + BatchNorm + ReLU + 2x2 max-pool, then
128·4·4 → 256 → classes with dropout 0.5 before the last layer: 0.62 M parameters at 32 px.
Two deliberate, output-preserving changes:

- an adaptive 4x4 average pool before the flatten, so any input of 8 px or more works
  (at 32 px the map is already 4x4 and the pool is the identity: the seed's exact shapes);
- the third max-pool is the first operation of the head, so `forward_features` returns the
  8x8 map (at 32 px) and Grad-CAM gets twice the resolution of the pooled one.
"""

from __future__ import annotations

import torch
from torch import nn

from visiondeck.models.attention import make_attention, site_name
from visiondeck.models.layers import AdaptiveAvgPool2dExportable, VisionDeckNet, conv_bn_relu

__all__ = ["SimpleCNN"]


class SimpleCNN(VisionDeckNet):
    """The seed CNN with timm's interface; `attention` ("cbam", "se", "eca") adds a block
    after each stage."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        *,
        dropout: float = 0.5,
        attention: str = "none",
        widths: tuple[int, int, int] = (32, 64, 128),
        hidden: int = 256,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = widths[-1]
        self.head_hidden_size = hidden
        stages = []
        previous = in_chans
        for index, width in enumerate(widths):
            block = conv_bn_relu(previous, width, bias=True)  # the seed's convs carry a bias
            if attention != "none":
                block.add_module(site_name(attention), make_attention(attention, width))
            if index < len(widths) - 1:
                block.add_module("pool", nn.MaxPool2d(2))
            stages.append(block)
            previous = width
        self.stages = nn.Sequential(*stages)
        self.head_pool = nn.MaxPool2d(2)  # the seed's third pool (see the module docstring)
        self.pool = AdaptiveAvgPool2dExportable(4)
        self.fc1 = nn.Linear(widths[-1] * 4 * 4, hidden)
        self.act = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(self.head_pool(x)).flatten(1)
        x = self.drop(self.act(self.fc1(x)))
        return x if pre_logits else self.fc(x)

    def backbone_stages(self) -> list[nn.Module]:
        # The hidden FC layer (85 % of the weights) is the last stage to unfreeze.
        return [*self.stages, self.fc1]
