"""The data profile: sizes, grey vs colour, mean/std and the mirror test on images whose
answers are known in advance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visiondeck.data.profile import profile_images


def _save(root: Path, label: str, name: str, array: np.ndarray) -> tuple[str, str]:
    (root / label).mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(root / label / f"{name}.png")
    return f"{label}/{name}.png", label


def test_grey_values_sizes_and_counts_are_measured(tmp_path: Path) -> None:
    # class a: 6 images 10×10 of value 51 (0.2); class b: 2 images 20×10, half 0 / half 255
    items = [_save(tmp_path, "a", f"a{i}", np.full((10, 10), 51, np.uint8)) for i in range(6)]
    half = np.zeros((10, 20), np.uint8)
    half[:, 10:] = 255
    items += [_save(tmp_path, "b", f"b{i}", half) for i in range(2)]
    profile = profile_images(tmp_path, items)
    assert profile.images == 8 and profile.sampled == 8
    assert profile.class_counts == {"a": 6, "b": 2} and profile.imbalance == 3.0
    assert (profile.median_width, profile.median_height) == (10, 10)
    assert profile.aspect_p90 == pytest.approx(2.0) and profile.aspect_p10 == 1.0
    assert profile.grey and profile.grey_share == 1.0 and len(profile.mean) == 1
    # per-image moments averaged: E[x] = (6·0.2 + 2·0.5)/8, E[x²] = (6·0.04 + 2·0.5)/8
    mean = (6 * 0.2 + 2 * 0.5) / 8
    second = (6 * 0.04 + 2 * 0.5) / 8
    assert profile.mean[0] == pytest.approx(mean, abs=1e-4)
    assert profile.std[0] == pytest.approx(np.sqrt(second - mean**2), abs=1e-4)


def test_colour_images_with_equal_channels_count_as_grey(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    items = []
    for i in range(10):
        grey = rng.integers(0, 256, (12, 12), dtype=np.uint8)
        items.append(_save(tmp_path, "x", f"g{i}", np.dstack([grey, grey, grey])))  # RGB file
    profile = profile_images(tmp_path, items)
    assert profile.grey_share == 1.0 and profile.grey


def test_colour_mean_and_std_per_channel(tmp_path: Path) -> None:
    # every image: red 255, green 0, blue half 0 / half 255
    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 0] = 255
    image[:, 4:, 2] = 255
    items = [_save(tmp_path, lab, f"{lab}{i}", image) for lab in "pq" for i in range(3)]
    profile = profile_images(tmp_path, items)
    assert not profile.grey and profile.grey_share == 0.0
    assert profile.mean == pytest.approx((1.0, 0.0, 0.5), abs=1e-4)
    assert profile.std[0] == pytest.approx(0.001, abs=1e-3)  # clamped variance, not NaN
    assert profile.std[2] == pytest.approx(0.5, abs=1e-4)


def test_sample_is_bounded_and_sizes_come_from_the_catalog(tmp_path: Path) -> None:
    items = [
        _save(tmp_path, "a" if i % 2 else "b", f"i{i}", np.full((6, 6), i, np.uint8))
        for i in range(40)
    ]
    sizes = {relpath: (300, 100) for relpath, _ in items}  # what a catalog recorded
    profile = profile_images(tmp_path, items, sizes=sizes, sample=5)
    assert profile.sampled == 5 and profile.images == 40
    assert (profile.median_width, profile.median_height, profile.median_side) == (300, 100, 173)
    assert profile.aspect_median == 3.0


def test_mirror_test_tells_mirrored_classes_from_symmetric_ones(tmp_path: Path) -> None:
    left = np.zeros((16, 16), np.uint8)
    left[:, :8] = 255
    right = left[:, ::-1].copy()
    centre = np.zeros((16, 16), np.uint8)
    centre[4:12, 4:12] = 255
    ring = 255 - centre
    mirrored = [
        _save(tmp_path / "m", lab, f"{lab}{i}", img)
        for lab, img in (("l", left), ("r", right))
        for i in range(3)
    ]
    symmetric = [
        _save(tmp_path / "s", lab, f"{lab}{i}", img)
        for lab, img in (("c", centre), ("o", ring))
        for i in range(3)
    ]
    # a mirrored "l" is exactly an "r": a flip changes the class
    assert profile_images(tmp_path / "m", mirrored).flip_consistency == 0.0
    assert profile_images(tmp_path / "s", symmetric).flip_consistency == 1.0


def test_unreadable_files_are_listed_not_fatal(tmp_path: Path) -> None:
    items = [_save(tmp_path, "a", f"a{i}", np.full((8, 8), 10, np.uint8)) for i in range(3)]
    (tmp_path / "a" / "bad.png").write_bytes(b"not a png")
    profile = profile_images(tmp_path, [*items, ("a/bad.png", "a")])
    assert profile.unreadable == ["a/bad.png"] and profile.sampled == 3
