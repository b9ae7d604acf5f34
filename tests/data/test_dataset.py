"""The torch dataset: shared preparation, augmentation presets, bad files skipped and counted."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.factories import write_class_folder
from visiondeck.config import DataConfig
from visiondeck.data.dataset import (
    ImageFileDataset,
    PrepareSpec,
    class_balanced_sampler,
    collate_skip_bad,
    datasets_from_split,
)
from visiondeck.data.prepare import prepare_split
from visiondeck.data.transforms import AUGMENT_PRESETS, build_augment, normalize


@pytest.fixture
def split_folder(tmp_path: Path):
    root = tmp_path / "d"
    write_class_folder(root, {"a": 20, "b": 20}, size=40)
    return prepare_split(DataConfig(source=str(root)), prepared=tmp_path / "p").split


@pytest.mark.parametrize("channels", [1, 3])
def test_items_are_normalised_tensors_of_the_recipe_size(split_folder, channels: int) -> None:
    cfg = DataConfig(image_size=24, channels=channels, augment="none", mean=(0.5,), std=(0.25,))
    sets = datasets_from_split(split_folder, cfg)
    x, y = sets["train"][0]
    assert x.shape == (channels, 24, 24) and x.dtype == torch.float32
    assert y in (0, 1)
    assert x.min() >= -2.0 - 1e-6 and x.max() <= 2.0 + 1e-6  # (0..1 - 0.5) / 0.25
    assert len(sets["train"]) + len(sets["val"]) + len(sets["test"]) == 40


def test_bad_file_during_training_is_skipped_and_counted(split_folder) -> None:
    cfg = DataConfig(image_size=16, channels=3, augment="standard")
    train = datasets_from_split(split_folder, cfg)["train"]
    victim = split_folder.root / train.paths[3]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated after the split was made
    (split_folder.root / train.paths[5]).unlink()  # deleted
    loader = DataLoader(train, batch_size=8, collate_fn=collate_skip_bad)
    seen = skipped = 0
    for batch in loader:
        seen += len(batch.labels)
        skipped += batch.skipped
        assert batch.images.shape[1:] == (3, 16, 16)
    assert skipped == 2 and seen == len(train) - 2


def test_all_bad_batch_is_empty_not_an_error() -> None:
    batch = collate_skip_bad([None, None])
    assert batch.images.numel() == 0 and batch.skipped == 2


def test_class_balanced_sampler_draws_classes_equally() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    sampler = class_balanced_sampler(labels, seed=0, num_samples=4000)
    drawn = Counter(labels[i] for i in sampler)
    assert abs(drawn[0] - drawn[1]) < 300


@pytest.mark.parametrize("preset", AUGMENT_PRESETS)
def test_augment_presets_keep_shape_and_dtype(preset: str) -> None:
    augment = build_augment(preset, 32)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    if preset == "none":
        assert augment is None
        return
    torch.manual_seed(0)
    out = augment(image)
    assert out.shape == image.shape and out.dtype == torch.uint8


def test_strong_augmentation_changes_images() -> None:
    augment = build_augment("strong", 32)
    torch.manual_seed(1)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    assert any(not torch.equal(augment(image), image) for _ in range(5))


def test_normalize_matches_hand_computation() -> None:
    array = np.array([[[0, 255, 51]]], dtype=np.uint8)
    out = normalize(array, (0.5, 0.5, 0.2), (0.5, 0.25, 0.1))
    np.testing.assert_allclose(out[:, 0, 0], [-1.0, 2.0, 0.0], atol=1e-6)
    gray = normalize(np.full((2, 2, 1), 255, np.uint8), (0.485, 0.456, 0.406), (0.5, 0.5, 0.5))
    assert gray.shape == (1, 2, 2)


def test_dataset_reads_labels_in_class_order(split_folder) -> None:
    spec = PrepareSpec(16, 3, "letterbox", (0.5,), (0.5,))
    records = split_folder.subset("train")
    ds = ImageFileDataset(split_folder.root, records, split_folder.classes, spec)
    assert [split_folder.classes[i] for i in ds.labels] == [r.label for r in records]


def test_balanced_draws_depend_on_seed_and_epoch_only() -> None:
    """A resumed run builds a fresh sampler and jumps to epoch k: it must draw what the
    uninterrupted run drew at epoch k (Lightning calls set_epoch each epoch)."""
    labels = np.array([0] * 30 + [1] * 6 + [2] * 4)
    running = class_balanced_sampler(labels, seed=3)
    order = []
    for epoch in range(3):
        running.set_epoch(epoch)
        order.append(list(running))
    resumed = class_balanced_sampler(labels, seed=3)
    resumed.set_epoch(2)
    assert list(resumed) == order[2]
    assert order[0] != order[1] != order[2]  # still a new draw every epoch
    other = class_balanced_sampler(labels, seed=4)
    other.set_epoch(2)
    assert list(other) != order[2]
