"""Model specs and the catalogue behind `visiondeck models list`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import visiondeck
from visiondeck.models import ModelError, ModelSpec, list_models, model_spec
from visiondeck.models.specs import _CURATED_TIMM, _CURATED_TV, resolve_name


def test_list_models_marks_the_offline_weights() -> None:
    specs = {s.name: s for s in list_models()}
    assert specs["efficientnet_lite0"].offline_weights is True
    assert specs["resnet18"].offline_weights is False
    assert specs["simple_cnn"].offline_weights is False
    assert {"simple_cnn", "resnet_small", "resnet_small_w", "efficientnet_lite1",
            "efficientnet_lite2", "densenet121", "convnext_tiny", "vit_tiny_patch16_224",
            "mobilenetv3_large_100", "mobilenetv3_small_100", "tv:resnet18"} <= set(specs)
    assert all(s.source in ("visiondeck", "timm", "torchvision", "efficientnet_lite")
               for s in specs.values())


def test_listing_imports_neither_torch_nor_timm() -> None:
    code = ("import sys, visiondeck.models as m; specs = m.list_models(); "
            "m.model_spec('efficientnet_lite0'); m.model_spec('resnet18'); "
            "print(len(specs), 'torch' in sys.modules, 'timm' in sys.modules)")
    src = Path(visiondeck.__file__).parents[1]
    path = os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    assert out[1:] == ["False", "False"] and int(out[0]) > 15


def test_include_timm_lists_every_timm_architecture() -> None:
    import timm

    names = {s.name for s in list_models(include_timm=True)}
    assert set(timm.list_models()) <= names and "simple_cnn" in names


@pytest.mark.parametrize("arch", sorted(_CURATED_TIMM))
def test_curated_timm_metadata_matches_timm(arch: str) -> None:
    from timm.models import get_pretrained_cfg

    spec, cfg = model_spec(arch), get_pretrained_cfg(arch)
    assert spec.input_size == cfg.input_size[-1]
    assert spec.mean == pytest.approx(cfg.mean) and spec.std == pytest.approx(cfg.std)


def test_curated_torchvision_names_exist() -> None:
    for arch in _CURATED_TV:
        spec = model_spec(f"tv:{arch}")
        assert spec.source == "torchvision" and spec.input_size == 224


def test_specs_of_names_outside_the_tables() -> None:
    spec = model_spec("resnet18.tv_in1k")
    assert (spec.name, spec.source, spec.offline_weights) == ("resnet18.tv_in1k", "timm", False)
    assert model_spec("regnety_002").input_size == 224
    assert resolve_name("timm:efficientnet_lite0").source == "timm"
    assert resolve_name("EfficientNet_Lite0").arch == "tf_efficientnet_lite0"
    with pytest.raises(ModelError, match="did you mean 'convnext_tiny'"):
        model_spec("convnext_tinny")


def test_for_channels_averages_rgb_statistics() -> None:
    spec = model_spec("resnet18")
    grey = spec.for_channels(1)
    assert grey.mean == pytest.approx(((0.485 + 0.456 + 0.406) / 3,))
    assert len(grey.std) == 1 and spec.for_channels(3) is spec
    assert isinstance(grey, ModelSpec) and grey.name == spec.name
