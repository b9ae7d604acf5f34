"""The automatic recipe: each rule on profiles with known answers, and the user's keys
winning over every automatic choice on real (tiny) data."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visiondeck.data.profile import DataProfile
from visiondeck.train.auto import auto_recipe, choose, flatten_keys, holdout_fraction


def _profile(**changes) -> DataProfile:
    base = DataProfile(
        images=57000,
        classes=[str(i) for i in range(10)],
        class_counts={str(i): 5700 for i in range(10)},
        median_width=28,
        median_height=28,
        median_side=28,
        min_side_p5=28,
        aspect_median=1.0,
        aspect_p10=1.0,
        aspect_p90=1.0,
        sampled=512,
        grey_share=1.0,
        mean=(0.286,),
        std=(0.353,),
        flip_consistency=0.9,
    )
    return replace(base, **changes)


def _values(choices: dict) -> dict:
    return {k: v for k, (v, _) in choices.items()}


def test_small_grey_images_train_from_scratch_at_their_own_size() -> None:
    got = _values(choose(_profile(), transfer_weights=True))
    assert got["model.name"] == "resnet_small_t" and got["model.pretrained"] is False
    assert (got["data.image_size"], got["data.channels"], got["data.resize"]) == (28, 1, "stretch")
    assert (got["data.mean"], got["data.std"]) == ((0.286,), (0.353,))  # the data's own
    assert got["data.augment"] == "light" and got["data.flip"] is True
    # 57000 / 200 = 285 → 256; lr 0.1 at 256
    assert (got["train.batch_size"], got["train.optimizer"], got["train.lr"]) == (256, "sgd", 0.1)
    assert got["train.scheduler"] == "onecycle" and got["train.balance"] == "none"
    on_gpu = _values(choose(_profile(), transfer_weights=True, gpu=True))
    assert on_gpu["model.name"] == "resnet_small"


def test_tiny_sets_get_small_batches_and_a_scaled_learning_rate() -> None:
    got = _values(
        choose(
            _profile(images=1258, median_side=8, median_width=8, median_height=8),
            transfer_weights=False,
        )
    )
    # 8 px is upsampled to 24: three 2× poolings still leave a 3×3 map
    assert got["data.image_size"] == 24
    assert got["train.batch_size"] == 32
    assert got["train.lr"] == pytest.approx(round(0.1 * math.sqrt(32 / 256), 4))


def test_mirror_sensitive_classes_turn_flips_off() -> None:
    got = _values(choose(_profile(flip_consistency=0.4), transfer_weights=False))
    assert got["data.flip"] is False


def test_imbalance_weights_the_loss() -> None:
    counts = {"a": 900, "b": 100}
    got = _values(
        choose(
            _profile(classes=["a", "b"], class_counts=counts, images=1000), transfer_weights=False
        )
    )
    assert got["train.balance"] == "weights"


def test_photos_transfer_from_offline_weights_with_their_normalisation() -> None:
    photo = _profile(
        median_side=400,
        median_width=480,
        median_height=360,
        grey_share=0.0,
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.2, 0.2),
        aspect_median=1.33,
        aspect_p10=1.33,
        aspect_p90=1.34,
        images=3000,
    )
    got = _values(choose(photo, transfer_weights=True))
    assert (got["model.name"], got["model.pretrained"]) == ("efficientnet_lite0", True)
    assert got["data.image_size"] == 224 and got["data.channels"] == 3
    assert got["data.mean"] is None and got["data.std"] is None  # the weights' own
    assert got["data.resize"] == "stretch"  # one shape for all: distorted alike
    assert got["train.freeze"] == "progressive" and got["train.optimizer"] == "adamw"
    scratch = _values(choose(photo, transfer_weights=False))
    assert (scratch["model.name"], scratch["model.pretrained"]) == ("resnet_small", False)
    assert scratch["data.image_size"] == 64 and scratch["data.mean"] == (0.5, 0.4, 0.3)


def test_varied_shapes_are_letterboxed_and_few_photos_strongly_augmented() -> None:
    mixed = _profile(
        median_side=300,
        aspect_p10=0.7,
        aspect_p90=1.5,
        images=500,
        grey_share=0.0,
        mean=(0.4, 0.4, 0.4),
        std=(0.2, 0.2, 0.2),
    )
    got = _values(choose(mixed, transfer_weights=False))
    assert got["data.resize"] == "letterbox"
    assert got["data.augment"] == "strong"  # 50 images per class


@pytest.mark.parametrize(
    ("usable", "share"), [(60000, 0.05), (20000, 0.1), (4000, 0.15), (0, 0.15)]
)
def test_holdout_fraction_aims_for_2000_images(usable: int, share: float) -> None:
    assert holdout_fraction(usable) == share


def test_flatten_keys() -> None:
    assert flatten_keys({"name": "x", "train": {"lr": 1, "epochs": 2}, "data": {}}) == {
        "name",
        "train.lr",
        "train.epochs",
    }


def _grey_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label, level in (("dark", 40), ("light", 200)):
        (root / label).mkdir(parents=True)
        for i in range(12):
            image = np.clip(rng.normal(level, 10, (12, 12)), 0, 255).astype(np.uint8)
            Image.fromarray(np.dstack([image] * 3)).save(root / label / f"{i}.png")  # RGB
    return root


def test_auto_recipe_measures_the_data_and_leaves_the_users_keys(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data = _grey_folder(tmp_path / "shades")
    recipe_file = tmp_path / "mine.yaml"
    recipe_file.write_text("train:\n  optimizer: adam\n")
    plan = auto_recipe(
        str(data),
        recipe_path=recipe_file,
        overrides=["train.lr=0.5", "data.num_workers=1"],
        progress=False,
        gpu=False,
    )
    recipe = plan.recipe
    assert recipe.name == "shades" and recipe.data.source == str(data)
    # RGB files, grey data; 12 px is upsampled to the smallest input, 24 px
    assert (recipe.data.image_size, recipe.data.channels) == (24, 1)
    # the measured mean: half the training images near 40/255, half near 200/255
    assert recipe.data.mean[0] == pytest.approx(plan.profile.mean[0])
    assert 0.35 < recipe.data.mean[0] < 0.6
    assert recipe.train.lr == 0.5 and recipe.train.optimizer == "adam"
    by = {c.key: c.by for c in plan.choices}
    assert by["train.lr"] == "override" and by["train.optimizer"] == "recipe"
    assert by["data.image_size"] == "auto"
    assert plan.profile.images == sum(plan.profile.class_counts.values()) == 16


@pytest.mark.parametrize(("side", "size"), [(5, 24), (16, 24), (23, 24), (24, 24), (28, 28),
                                            (61, 61)])
def test_small_images_train_at_their_size_but_never_below_24_px(side, size) -> None:
    got = _values(choose(_profile(median_side=side, median_width=side, median_height=side),
                         transfer_weights=False))
    assert got["data.image_size"] == size
