"""Batched augmentation: shapes, independence per image, identity for none; mixup/cutmix."""

from __future__ import annotations

import pytest
import torch

from visiondeck.train.augment import BatchAugment, Normalize, mix_batch


@pytest.mark.parametrize("preset", ["light", "standard", "strong"])
def test_presets_keep_shape_and_range_and_differ_per_image(preset: str) -> None:
    torch.manual_seed(0)
    image = torch.rand(1, 3, 28, 28)
    batch = image.repeat(16, 1, 1, 1)
    out = BatchAugment(preset, 28)(batch)
    assert out.shape == batch.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    distinct = {tuple(o.flatten()[:50].tolist()) for o in out}
    assert len(distinct) > 8  # each image draws its own transform


def test_none_is_identity_and_light_flips_exactly() -> None:
    batch = torch.rand(4, 1, 8, 8)
    assert torch.equal(BatchAugment("none", 8)(batch), batch)
    aug = BatchAugment("light", 8)
    aug.shift = 0.0  # flip only: every output is the image or its exact mirror
    torch.manual_seed(3)
    out = aug(batch)
    for o, b in zip(out, batch, strict=True):
        assert torch.allclose(o, b, atol=1e-5) or torch.allclose(o, b.flip(-1), atol=1e-5)


def test_normalize_uint8_and_broadcasts_gray_stats() -> None:
    x = torch.full((2, 3, 2, 2), 255, dtype=torch.uint8)
    out = Normalize((0.5,), (0.25,), 3)(x)
    assert torch.allclose(out, torch.full_like(out, 2.0))
    gray = Normalize((0.4, 0.5, 0.6), (0.5, 0.5, 0.5), 1)(torch.zeros(1, 1, 2, 2))
    assert torch.allclose(gray, torch.full_like(gray, -1.0))


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_targets_are_distributions(mixup: float, cutmix: float) -> None:
    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16)
    y = torch.randint(0, 5, (8,))
    mixed, target = mix_batch(x, y, 5, mixup=mixup, cutmix=cutmix)
    assert mixed.shape == x.shape and target.shape == (8, 5)
    assert torch.allclose(target.sum(1), torch.ones(8))
    assert not torch.equal(mixed, x)


def test_mixing_off_returns_hard_labels() -> None:
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    mixed, target = mix_batch(x, y, 4)
    assert mixed is x and target is y
