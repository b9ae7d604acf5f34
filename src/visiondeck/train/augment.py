"""Batched augmentation for in-memory data, and mixup/cutmix for every data path.

When a split is decoded into memory, per-sample augmentation in DataLoader workers would
become the bottleneck on a small machine (Python per image). Here one affine resample
(`affine_grid` + `grid_sample`) per batch draws an independent flip, shift, zoom and rotation
for every image, so augmentation costs a few vectorised ops per batch. The presets mirror
the per-sample torchvision presets of `visiondeck.data.transforms` (same names, same
intent): light = flip + small shift; standard = + zoom and small rotations; strong = +
brightness/contrast jitter and random erasing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["BatchAugment", "Normalize", "mix_batch"]


class Normalize:
    """uint8 or 0..1 float batch → standardised float, per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], channels: int) -> None:
        mean = list(mean) * channels if len(mean) == 1 else list(mean)
        std = list(std) * channels if len(std) == 1 else list(std)
        if channels == 1 and len(mean) == 3:
            mean, std = [sum(mean) / 3], [sum(std) / 3]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


class BatchAugment:
    """Per-image random augmentation of a (B, C, H, W) float batch in 0..1."""

    def __init__(self, preset: str, image_size: int, *, flip: bool = True) -> None:
        self.preset = preset
        self.flip = flip
        self.shift = 1.0 / 16 if preset == "light" else 1.0 / 10
        self.zoom = (1.0, 1.0) if preset == "light" else (1.0, 1.2)
        self.rotate = 0.0 if preset == "light" else 10.0
        self.rotate_p = 0.3
        self.image_size = image_size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.preset == "none":
            return x
        b = x.shape[0]
        device = x.device
        scale = torch.empty(b, device=device).uniform_(*self.zoom)
        angle = torch.zeros(b, device=device)
        if self.rotate:
            rotate = torch.rand(b, device=device) < self.rotate_p
            angle = torch.where(rotate, torch.empty(b, device=device).uniform_(
                -self.rotate, self.rotate), angle) * (math.pi / 180)
        flip = (torch.rand(b, device=device) < 0.5) if self.flip else torch.zeros(
            b, dtype=torch.bool, device=device)
        sx = torch.where(flip, -1.0, 1.0) / scale
        sy = 1.0 / scale
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(b, 2, 3, device=device)
        theta[:, 0, 0] = cos * sx
        theta[:, 0, 1] = -sin * sy
        theta[:, 1, 0] = sin * sx
        theta[:, 1, 1] = cos * sy
        theta[:, :, 2] = torch.empty(b, 2, device=device).uniform_(-2 * self.shift, 2 * self.shift)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        mode = "nearest" if self.preset == "light" else "bilinear"
        x = F.grid_sample(x, grid, mode=mode, padding_mode="reflection", align_corners=False)
        if self.preset == "strong":
            x = self._color(x)
            x = self._erase(x)
        return x

    @staticmethod
    def _color(x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        brightness = torch.empty(b, 1, 1, 1, device=x.device).uniform_(0.8, 1.2)
        contrast = torch.empty(b, 1, 1, 1, device=x.device).uniform_(0.8, 1.2)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * contrast + mean * brightness).clamp_(0.0, 1.0)

    @staticmethod
    def _erase(x: torch.Tensor, p: float = 0.25) -> torch.Tensor:
        b, _, h, w = x.shape
        area = torch.empty(b, device=x.device).uniform_(0.02, 0.2)
        ratio = torch.exp(torch.empty(b, device=x.device).uniform_(math.log(0.3), math.log(3.3)))
        eh = (area * ratio).sqrt().mul(h).clamp(1, h)
        ew = (area / ratio).sqrt().mul(w).clamp(1, w)
        top = torch.rand(b, device=x.device) * (h - eh)
        left = torch.rand(b, device=x.device) * (w - ew)
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        box = ((rows >= top.view(-1, 1, 1)) & (rows < (top + eh).view(-1, 1, 1))
               & (cols >= left.view(-1, 1, 1)) & (cols < (left + ew).view(-1, 1, 1)))
        box &= (torch.rand(b, device=x.device) < p).view(-1, 1, 1)
        return x.masked_fill(box.unsqueeze(1), 0.0)


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, mixup: float = 0.0,
              cutmix: float = 0.0, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al.) or CutMix (Yun et al.), chosen at random when both are on.

    Returns the mixed batch and soft targets; a no-op (hard labels) when both are off.
    """
    if not (mixup or cutmix) or x.shape[0] < 2:
        return x, y
    use_cutmix = cutmix > 0 and (mixup == 0 or torch.rand(1, generator=generator).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    # multi-label targets are already (N, K) rows; mixing blends the label sets
    target = y.float() if y.dim() == 2 else F.one_hot(y, num_classes).float()
    if use_cutmix:
        h, w = x.shape[2:]
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1.0 - lam) * x[perm]
    return x, lam * target + (1.0 - lam) * target[perm]
