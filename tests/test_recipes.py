"""The shipped seed recipes: the CIFAR one is the seed exactly, and the transfer and seed
recipes train a step on tiny data. (That every shipped recipe loads what its file says is
tests/test_config.py's.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from visiondeck.config import load_recipe
from visiondeck.train.runner import train

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_cifar_recipe_is_the_seed_exactly() -> None:
    recipe = load_recipe(CONFIGS / "cifar_simplecnn.yaml")
    assert (recipe.model.name, recipe.model.dropout) == ("simple_cnn", 0.5)
    assert (recipe.train.optimizer, recipe.train.lr, recipe.train.batch_size,
            recipe.train.epochs) == ("adam", 0.001, 64, 10)


@pytest.mark.parametrize("name", ["transfer_lite0.yaml", "cifar_simplecnn.yaml"])
def test_recipe_trains_on_tiny_data(name: str, tmp_path: Path, monkeypatch) -> None:
    from tests.factories import write_learnable

    monkeypatch.chdir(tmp_path)
    data = write_learnable(tmp_path / "images", per_class=8, size=32)
    recipe = load_recipe(CONFIGS / name, [
        f"data.source={data}", "data.test_source=null", "data.image_size=32",
        "data.val_fraction=0.25", "data.test_fraction=0.25", "data.num_workers=1",
        "train.epochs=2", "train.batch_size=4", "train.min_val_accuracy=null",
        f"output_dir={tmp_path / 'runs'}", "tracking.enabled=false",
    ])
    result = train(recipe, progress=False, max_steps=3)
    assert (result.run_dir / "model" / "weights.safetensors").exists()
