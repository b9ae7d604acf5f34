"""Our networks (shapes, sizes, CBAM) and the factory over timm and torchvision."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from visiondeck.config import ModelConfig
from visiondeck.models import (
    ModelError,
    ResNetSmall,
    SimpleCNN,
    create_model,
    from_config,
)
from visiondeck.models.layers import AdaptiveAvgPool2dExportable

# simple_cnn at 32 px with 10 classes, counted by hand from the seed's layers:
# convs 896 + 18_496 + 73_856, BatchNorms 64 + 128 + 256, fc 524_544 + 2_570.
SEED_PARAMS = 620_810

# Documented sizes of the resnet_small variants (10 classes, 3 channels).
RESNET_SMALL_PARAMS = {
    "resnet_small_t": (0.35e6, 0.45e6),
    "resnet_small_m": (0.85e6, 1.0e6),
    "resnet_small": (1.55e6, 1.75e6),
    "resnet_small_w": (6.4e6, 6.7e6),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_simple_cnn_has_the_seed_shapes_at_32px() -> None:
    model = create_model("simple_cnn", 10)
    assert isinstance(model, SimpleCNN)
    assert n_params(model) == SEED_PARAMS
    assert model.fc1.in_features == 128 * 4 * 4 == 2048
    assert [type(m) for m in model.stages[0][:3]] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert [s.conv.out_channels for s in model.stages] == [32, 64, 128]
    x = torch.randn(2, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (2, 128, 8, 8)
    # The adaptive pool is the identity at 32 px: the seed's 4x4 map reaches fc1 untouched.
    assert torch.equal(model.pool(model.head_pool(features)), model.head_pool(features))
    assert model.eval()(x).shape == (2, 10)
    assert isinstance(model.drop, nn.Dropout) and model.drop.p == 0.5


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("size", [28, 32, 64])
def test_simple_cnn_runs_on_grey_and_rgb_inputs(in_chans: int, size: int) -> None:
    model = create_model("simple_cnn", 7, in_chans=in_chans).eval()
    out = model(torch.randn(3, in_chans, size, size))
    assert out.shape == (3, 7) and torch.isfinite(out).all()


def test_simple_cnn_takes_inputs_down_to_8px() -> None:
    assert create_model("simple_cnn", 4).eval()(torch.randn(1, 3, 8, 8)).shape == (1, 4)


@pytest.mark.parametrize("size", [1, 3, 5, 7, 9, 14])
def test_exportable_pool_equals_adaptive_avg_pool(size: int) -> None:
    x = torch.randn(2, 3, size, size + 2)
    expected = F.adaptive_avg_pool2d(x, 4)
    assert torch.allclose(AdaptiveAvgPool2dExportable(4)(x), expected, atol=1e-6)


@pytest.mark.parametrize("name", sorted(RESNET_SMALL_PARAMS))
def test_resnet_small_variants_forward_within_their_documented_size(name: str) -> None:
    model = create_model(name, 10, in_chans=1)
    low, high = RESNET_SMALL_PARAMS[name]
    assert isinstance(model, ResNetSmall) and low <= n_params(model) <= high
    for size in (28, 32, 64):
        out = model.eval()(torch.randn(2, 1, size, size))
        assert out.shape == (2, 10)
    # ceil-mode pools keep the border of a 28 px image: 28 -> 14 -> 7 -> 4
    assert model.forward_features(torch.randn(1, 1, 28, 28)).shape[-2:] == (4, 4)


def test_resnet_small_is_residual_and_channels_last_friendly() -> None:
    model = create_model("resnet_small", 10).eval()
    assert sum(isinstance(m, nn.Module) and type(m).__name__ == "Residual"
               for m in model.modules()) == 2
    x = torch.randn(2, 3, 32, 32)
    reference = model(x)
    fast = model.to(memory_format=torch.channels_last)
    assert torch.allclose(fast(x.contiguous(memory_format=torch.channels_last)), reference,
                          atol=1e-4)


@pytest.mark.parametrize("name", ["simple_cnn", "resnet_small", "resnet18"])
def test_cbam_adds_attention_after_each_stage(name: str) -> None:
    plain = create_model(name, 10, in_chans=3)
    with_cbam = create_model(name, 10, in_chans=3, attention="cbam")
    blocks = [m for m in with_cbam.modules() if type(m).__name__ == "CBAM"]
    assert len(blocks) == (4 if name == "resnet18" else 3)
    assert n_params(with_cbam) > n_params(plain)
    out = with_cbam.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_attention_is_refused_for_architectures_without_support() -> None:
    # DenseNet, EfficientNet and the others: tests/models/test_attention_backbones.py
    with pytest.raises(ModelError, match="not supported for vit_tiny_patch16_224") as info:
        create_model("vit_tiny_patch16_224", 3, attention="cbam")
    assert "model.attention=none" in info.value.hint
    with pytest.raises(ModelError, match="unknown attention"):
        create_model("simple_cnn", 3, attention="bam")


def test_timm_model_by_name_follows_the_interface() -> None:
    model = create_model("resnet18", 4, in_chans=1, dropout=0.2).eval()
    spec = model.visiondeck_spec
    assert (spec.name, spec.source, spec.input_size) == ("resnet18", "timm", 224)
    # one channel: the RGB statistics averaged, as the summed first conv expects
    assert spec.mean == pytest.approx((sum((0.485, 0.456, 0.406)) / 3,))
    assert model.visiondeck_weights_source == "scratch"
    x = torch.randn(2, 1, 32, 32)
    assert model(x).shape == (2, 4)
    assert torch.allclose(model.forward_head(model.forward_features(x)), model(x))
    assert model.get_classifier().out_features == 4 and model.drop_rate == 0.2


def test_torchvision_model_by_prefix() -> None:
    model = create_model("tv:resnet18", 6, in_chans=1).eval()
    assert type(model).__module__.startswith("torchvision")
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 6)
    assert model.visiondeck_spec.source == "torchvision" and len(model.visiondeck_spec.mean) == 1


@pytest.mark.parametrize(("typo", "suggestion"), [
    ("resnet_smal", "resnet_small"),
    ("simple_cn", "simple_cnn"),
    ("resnet181", "resnet18"),
    ("efficientnet_lite_0", "efficientnet_lite0"),
])
def test_unknown_names_raise_with_a_suggestion(typo: str, suggestion: str) -> None:
    with pytest.raises(ModelError, match=f"did you mean '{suggestion}'") as info:
        create_model(typo, 3)
    assert info.value.exit_code == 4 and "visiondeck models list" in info.value.hint


def test_unknown_torchvision_name_is_refused() -> None:
    with pytest.raises(ModelError, match="unknown model 'tv:resnet19'"):
        create_model("tv:resnet19", 3)


def test_reset_classifier_and_pre_logits() -> None:
    model = create_model("simple_cnn", 10)
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model.num_classes == 3
    x = torch.randn(2, 3, 32, 32)
    assert model.eval().forward_head(model.forward_features(x), pre_logits=True).shape == (2, 256)
    model.reset_classifier(0)
    assert model(x).shape == (2, 256)


def test_from_config_passes_every_field() -> None:
    cfg = ModelConfig(name="resnet_small_t", attention="cbam", dropout=0.3)
    model = from_config(cfg, num_classes=5, in_chans=1)
    assert isinstance(model, ResNetSmall) and model.drop.p == 0.3
    assert any(type(m).__name__ == "CBAM" for m in model.modules())
    assert model.visiondeck_spec.mean == (0.5,) and model.fc.out_features == 5


@pytest.mark.parametrize("kwargs", [{"num_classes": -1}, {"in_chans": 0}, {"dropout": 1.0}])
def test_invalid_arguments_are_model_errors(kwargs: dict) -> None:
    arguments = {"num_classes": 3, **kwargs}
    with pytest.raises(ModelError):
        create_model("simple_cnn", arguments.pop("num_classes"), **arguments)
