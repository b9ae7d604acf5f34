"""Recipes: precedence, unknown keys with suggestions, type errors, the defaults file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from visiondeck.config import (
    Recipe,
    load_recipe,
    parse_overrides,
    recipe_to_yaml,
    render_defaults,
    save_recipe,
)
from visiondeck.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_precedence_defaults_then_yaml_then_overrides(tmp_path: Path) -> None:
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("train:\n  epochs: 7\n  lr: 0.01\ndata:\n  channels: 1\n")
    recipe = load_recipe(recipe_file, ["train.epochs=3", "data.mean=[0.5]"])
    assert recipe.train.epochs == 3  # override beats YAML
    assert recipe.train.lr == 0.01  # YAML beats default
    assert recipe.train.batch_size == Recipe().train.batch_size  # default stays
    assert recipe.data.channels == 1 and recipe.data.mean == (0.5,)


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [("train.epoch=3", "train.epochs"), ("data.imagesize=64", "data.image_size"),
     ("modle.name=x", "model.name")],
)
def test_unknown_override_keys_fail_with_a_suggestion(override: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"did you mean '{suggestion}'")):
        load_recipe(None, [override])


def test_unknown_yaml_key_fails_with_a_suggestion(tmp_path: Path) -> None:
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("train:\n  batchsize: 32\n")
    with pytest.raises(ConfigError, match=r"did you mean 'train\.batch_size'"):
        load_recipe(recipe_file)


def test_bad_values_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_recipe(None, ["train.epochs=0"])
    with pytest.raises(ConfigError, match=r"data\.resize"):
        load_recipe(None, ["data.resize=squash"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.epochs"])
    with pytest.raises(ConfigError, match="1 value"):
        load_recipe(None, ["data.mean=[0.1,0.2]"])


def test_override_values_are_typed_yaml() -> None:
    parsed = parse_overrides(["train.lr=3e-4", "data.test_source=null", "model.pretrained=true"])
    assert parsed == {"train.lr": 3e-4, "data.test_source": None, "model.pretrained": True}


def test_recipes_are_immutable() -> None:
    recipe = load_recipe()
    with pytest.raises(ValidationError):
        recipe.train.epochs = 99  # type: ignore[misc]


def test_saved_recipe_loads_back_identically(tmp_path: Path) -> None:
    recipe = load_recipe(CONFIGS / "sample.yaml", ["train.epochs=2"])
    path = save_recipe(recipe, tmp_path / "run" / "recipe.yaml")
    assert load_recipe(path) == recipe
    assert "epochs: 2" in recipe_to_yaml(recipe)


def test_committed_defaults_file_matches_the_schema() -> None:
    assert (CONFIGS / "defaults.yaml").read_text() == render_defaults(), (
        "configs/defaults.yaml is stale: run `visiondeck config defaults > configs/defaults.yaml`"
    )
    assert load_recipe(CONFIGS / "defaults.yaml") == Recipe()


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} → {"train.lr": 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _leaves(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads_what_its_file_says(path: Path) -> None:
    """Each key the file sets has the file's value (read here by plain YAML), every other key
    its default: a loader that dropped or mangled the file would not pass."""
    written = _leaves(yaml.safe_load(path.read_text()))
    loaded = _leaves(load_recipe(path).model_dump(mode="json"))
    defaults = _leaves(Recipe().model_dump(mode="json"))
    assert set(written) <= set(loaded)
    assert {k: loaded[k] for k in written} == written
    assert {k: v for k, v in loaded.items() if k not in written} == \
        {k: v for k, v in defaults.items() if k not in written}
    assert len(written) >= 10


def test_missing_or_malformed_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_recipe(tmp_path / "list.yaml")


def test_yaml_words_off_and_no_stay_strings(tmp_path) -> None:
    """YAML 1.1 reads `off` as False; recipes take it as the word (data.cache=off)."""
    from visiondeck.config import load_recipe

    assert load_recipe(None, ["data.cache=off"]).data.cache == "off"
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("data:\n  cache: off\ntracking:\n  enabled: false\n")
    recipe = load_recipe(recipe_file)
    assert recipe.data.cache == "off"
    assert recipe.tracking.enabled is False


def test_precision_32_given_as_a_number_is_the_text_32() -> None:
    """`train.precision=32` on the command line and `precision: 32` in YAML arrive as the
    integer 32; both mean the schema's "32"."""
    from visiondeck.config import load_recipe

    assert load_recipe(None, ["train.precision=32"]).train.precision == "32"
