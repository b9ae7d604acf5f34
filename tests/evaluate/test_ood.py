"""`evaluate --ood DIR`: the user's own folder of unlike images, prepared like the model's input.

The folder is built from images whose answers are already known: the run's test files and
the exact pictures of the built-in "noise" set. Its fire rate must then be the two rates
mixed by count, which a folder read differently (other preparation, other files, the
noise set twice) would not give.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image


def _ood_folder(trained_run: Path, target: Path) -> tuple[int, int]:
    """Test images + the noise set's pictures + two files that are not images to read.

    Returns (test images, noise images) written.
    """
    from visiondeck.evaluate.ood import noise_images
    from visiondeck.train.artifacts import load_run_splits, load_trained

    split, test_split = load_run_splits(trained_run)
    source = test_split or split
    tests = source.subset("test")
    for i, record in enumerate(tests):
        shutil.copyfile(source.root / record.relpath, target / "pictures" / f"t{i:03d}.png")
    noise = noise_images(load_trained(trained_run).spec)  # the "noise" set, image for image
    (target / "deeper" / "still").mkdir(parents=True)
    for i, array in enumerate(noise):
        Image.fromarray(array.transpose(1, 2, 0)).save(target / "deeper" / "still" / f"n{i}.png")
    (target / "pictures" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (target / "notes.txt").write_text("not a picture, not counted")
    return len(tests), len(noise)


def test_an_ood_folder_fires_as_its_known_parts_do(trained_run: Path, tmp_path: Path) -> None:
    from visiondeck.evaluate import evaluate_run
    from visiondeck.evaluate.ood import folder_images
    from visiondeck.train.artifacts import load_trained

    folder = tmp_path / "strangers"
    (folder / "pictures").mkdir(parents=True)
    n_test, n_noise = _ood_folder(trained_run, folder)
    images, failed = folder_images(folder, load_trained(trained_run).spec)
    assert images.shape == (n_test + n_noise, 3, 16, 16) and failed == 1

    result = evaluate_run(trained_run, out_dir=tmp_path / "ev", ood_dir=folder, n_boot=0,
                          report=False)
    reject = result.metrics["reject"]
    assert reject["ood_sources"] == {"noise": n_noise, "photos": 64,
                                     "strangers": n_test + n_noise}
    rates = reject["fire_rate"]
    assert rates["noise"] != rates["test"]  # else the mixture below could not tell them apart
    mixed = (n_test * rates["test"] + n_noise * rates["noise"]) / (n_test + n_noise)
    assert rates["strangers"] == pytest.approx(mixed, abs=2e-6)  # rates are kept to 6 places

