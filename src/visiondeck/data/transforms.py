"""Augmentation presets on torchvision transforms v2, and the shared input preparation.

Deterministic preparation (decode → resize → normalise) is not here: it is
`visiondeck.imaging.resize_image` plus `normalize`, the same numpy code serving runs, so a
model sees in production exactly what it saw in evaluation. Only the random part of training
(augmentation) lives in torch, applied to uint8 tensors after the shared resize.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

__all__ = [
    "AUGMENT_PRESETS",
    "build_augment",
    "normalize",
]

AUGMENT_PRESETS = ("none", "light", "standard", "strong")
Preset = Literal["none", "light", "standard", "strong"]


def normalize(
    array: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """uint8 (H, W, C) → float32 (C, H, W), scaled to 0..1 then standardised per channel.

    The arithmetic is `(x / 255 - mean) / std` in float32, in place on one new array; the
    per-channel constants are built once per (mean, std, channels) - the service runs this
    for every image, where numpy's per-call overhead, not the arithmetic, is the cost.
    """
    m, s = _constants(tuple(mean), tuple(std), array.shape[2])
    chw = array.transpose(2, 0, 1).astype(np.float32)
    chw *= np.float32(1.0 / 255.0)
    chw -= m
    chw /= s
    return chw


@functools.lru_cache(maxsize=64)
def _constants(mean: tuple[float, ...], std: tuple[float, ...], channels: int
               ) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(_per_channel(mean, channels), dtype=np.float32).reshape(channels, 1, 1)
    s = np.asarray(_per_channel(std, channels), dtype=np.float32).reshape(channels, 1, 1)
    m.flags.writeable = s.flags.writeable = False  # shared between calls
    return m, s


def _per_channel(values: Sequence[float], channels: int) -> list[float]:
    values = list(values)
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if channels == 1:  # an RGB statistic used on grayscale input: use the mean of channels
        return [float(np.mean(values))]
    raise ValueError(f"{len(values)} normalisation values for {channels} channels")


def build_augment(preset: Preset, image_size: int, *, flip: bool = True) -> Callable | None:
    """The random augmentation for training, on uint8 CHW tensors; None for `none`.

    `flip=False` leaves out the horizontal flip (data.flip: a mirrored digit is another digit).

    light: horizontal flip and a small shift; standard: + scale jitter and small rotations;
    strong: + RandAugment and random erasing. Sizes are preserved so batches stack.
    """
    if preset not in AUGMENT_PRESETS:
        raise ValueError(f"unknown augmentation preset {preset!r}; use one of {AUGMENT_PRESETS}")
    if preset == "none":
        return None
    from torchvision.transforms import v2

    pad = max(1, image_size // 8)
    steps: list = [v2.RandomHorizontalFlip()] if flip else []
    if preset == "light":
        steps.append(v2.RandomCrop(image_size, padding=pad // 2 or 1, padding_mode="reflect"))
    else:
        steps.append(v2.RandomResizedCrop(image_size, scale=(0.7, 1.0), ratio=(0.85, 1.18),
                                          antialias=True))
        steps.append(v2.RandomApply([v2.RandomRotation(10)], p=0.3))
    if preset == "strong":
        steps.append(v2.RandAugment(num_ops=2, magnitude=9))
        # erasing works on float tensors; keep uint8 by erasing with 0
        steps.append(v2.RandomErasing(p=0.25, value=0))
    return v2.Compose(steps)
