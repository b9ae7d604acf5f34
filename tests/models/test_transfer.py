"""Transfer-learning controls: head, stages, freezing, LR groups, Grad-CAM layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visiondeck.models import (
    ModelError,
    backbone_stages,
    classifier,
    create_model,
    freeze_backbone,
    gradcam_target_layer,
    param_groups,
    set_frozen_bn_eval,
    unfreeze_stages,
)

# Ours, the offline-pretrained default, and one model of each structure the helpers handle
# (timm group matcher: ResNet, EfficientNet, ViT; torchvision: ResNet, `features` models).
NAMES = ["simple_cnn", "resnet_small", "efficientnet_lite0", "resnet18", "vit_tiny_patch16_224",
         "tv:resnet18", "tv:mobilenet_v3_small"]


@pytest.fixture(scope="module", params=NAMES)
def model(request: pytest.FixtureRequest) -> nn.Module:
    return create_model(request.param, 5)


def trainable(model: nn.Module) -> set[int]:
    return {id(p) for p in model.parameters() if p.requires_grad}


def ids(module: nn.Module) -> set[int]:
    return {id(p) for p in module.parameters()}


def test_stages_and_head_partition_the_parameters(model: nn.Module) -> None:
    stages = backbone_stages(model)
    assert len(stages) >= 3
    seen = [id(p) for s in stages for p in s.parameters()] + list(ids(classifier(model)))
    assert len(seen) == len(set(seen)), "a parameter is in two stages"
    assert set(seen) == ids(model)
    assert isinstance(classifier(model), nn.Linear) and classifier(model).out_features == 5


def test_freeze_backbone_leaves_only_the_head_trainable(model: nn.Module) -> None:
    model.requires_grad_(True)
    freeze_backbone(model)
    assert trainable(model) == ids(classifier(model))


def test_unfreeze_one_stage_opens_exactly_the_last_stage(model: nn.Module) -> None:
    freeze_backbone(model)
    unfreeze_stages(model, 1)
    stages = backbone_stages(model)
    assert trainable(model) == ids(classifier(model)) | ids(stages[-1])
    unfreeze_stages(model, 2)
    assert trainable(model) == ids(classifier(model)) | ids(stages[-1]) | ids(stages[-2])
    unfreeze_stages(model, len(stages) + 3)
    assert trainable(model) == ids(model)
    with pytest.raises(ModelError):
        unfreeze_stages(model, -1)


def test_param_groups_decrease_towards_the_input_and_cover_everything(model: nn.Module) -> None:
    groups = param_groups(model, 1e-3, backbone_lr_mult=0.1, weight_decay=0.05)
    flat = [id(p) for g in groups for p in g["params"]]
    assert len(flat) == len(set(flat)) and set(flat) == ids(model)
    by_name: dict[str, float] = {}
    for group in groups:
        by_name.setdefault(group["name"], group["lr"])
        assert group["lr"] == by_name[group["name"]]
        if group["weight_decay"]:
            assert all(p.ndim > 1 for p in group["params"])
    stages = len(backbone_stages(model))
    lrs = [by_name[f"stage{i}"] for i in range(stages)] + [by_name["head"]]
    assert lrs == sorted(set(lrs)), "LRs must be distinct and grow towards the head"
    assert lrs[-1] == 1e-3 and lrs[-2] == pytest.approx(1e-4) and lrs[0] == pytest.approx(1e-5)
    norms = [p for g in groups for p in g["params"] if p.ndim == 1]
    assert norms and all(g["weight_decay"] == 0.0 for g in groups
                         if any(p.ndim == 1 for p in g["params"]))
    torch.optim.AdamW(groups, lr=1e-3)  # a valid optimizer spec


def test_frozen_batchnorm_stays_in_eval_mode_after_train() -> None:
    model = create_model("resnet_small", 3)
    freeze_backbone(model)
    model.train()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert set_frozen_bn_eval(model) == len(norms) == 8  # stem, 3 stage convs, 2 x 2 residual
    stem_bn = model.stem.bn
    before = stem_bn.running_mean.clone()
    model(torch.randn(4, 3, 32, 32))
    assert not stem_bn.training and torch.equal(stem_bn.running_mean, before)
    unfreeze_stages(model, 10)
    model.train()
    assert set_frozen_bn_eval(model) == 0 and stem_bn.training


@pytest.mark.parametrize("name", ["simple_cnn", "resnet_small", "efficientnet_lite0",
                                  "resnet18", "tv:resnet18", "densenet121", "convnext_tiny",
                                  "mobilenetv3_small_100", "tv:mobilenet_v3_small"])
def test_gradcam_layer_is_the_last_conv_block(name: str) -> None:
    model = create_model(name, 3).eval()
    layer = gradcam_target_layer(model)
    assert any(isinstance(m, nn.Conv2d) for m in layer.modules())
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    model(torch.randn(1, 3, 64, 64))
    handle.remove()
    assert len(seen) == 1 and seen[0].ndim == 4  # a spatial map, reached by the forward pass
    assert seen[0].shape[-1] >= 2


def test_gradcam_layer_of_a_transformer_needs_to_be_named() -> None:
    with pytest.raises(ModelError, match="no default Grad-CAM layer") as info:
        gradcam_target_layer(create_model("vit_tiny_patch16_224", 3))
    assert "target_layer" in info.value.hint


def test_simple_cnn_stages_end_with_the_hidden_fc_layer() -> None:
    model = create_model("simple_cnn", 3)
    stages = backbone_stages(model)
    assert stages[-1] is model.fc1 and classifier(model) is model.fc
    assert gradcam_target_layer(model) is model.stages[-1]
