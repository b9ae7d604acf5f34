"""Networks: one factory over ours, EfficientNet-Lite (offline ImageNet weights), timm and
torchvision, plus the transfer-learning controls the trainer, Grad-CAM and export use.

This is the torch layer, but its names resolve lazily (module `__getattr__`): listing
models (`list_models`, `model_spec`, `ModelSpec`, `ModelError`) imports neither torch nor
timm, so `visiondeck models list` stays fast; building one imports torch, and timm only when
a timm architecture (or EfficientNet-Lite) is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from visiondeck._lazy import lazy_exports

if TYPE_CHECKING:
    from visiondeck.models.attention import add_attention
    from visiondeck.models.binary import BinaryLogit
    from visiondeck.models.cbam import CBAM, add_cbam_to_resnet
    from visiondeck.models.errors import ModelError
    from visiondeck.models.factory import create_model, from_config
    from visiondeck.models.pretrained import WeightsReport, load_state_dict_file
    from visiondeck.models.resnet_small import ResNetSmall
    from visiondeck.models.simple_cnn import SimpleCNN
    from visiondeck.models.specs import ModelSpec, list_models, model_spec
    from visiondeck.models.transfer import (
        backbone_stages,
        classifier,
        freeze_backbone,
        gradcam_target_layer,
        param_groups,
        set_frozen_bn_eval,
        unfreeze_stages,
    )

# public name -> submodule that defines it
_LAZY: dict[str, str] = {
    "add_attention": "attention",
    "BinaryLogit": "binary",
    "CBAM": "cbam",
    "add_cbam_to_resnet": "cbam",
    "ModelError": "errors",
    "create_model": "factory",
    "from_config": "factory",
    "WeightsReport": "pretrained",
    "load_state_dict_file": "pretrained",
    "ResNetSmall": "resnet_small",
    "SimpleCNN": "simple_cnn",
    "ModelSpec": "specs",
    "list_models": "specs",
    "model_spec": "specs",
    "backbone_stages": "transfer",
    "classifier": "transfer",
    "freeze_backbone": "transfer",
    "gradcam_target_layer": "transfer",
    "param_groups": "transfer",
    "set_frozen_bn_eval": "transfer",
    "unfreeze_stages": "transfer",
}

__all__ = [
    "CBAM",
    "BinaryLogit",
    "ModelError",
    "ModelSpec",
    "ResNetSmall",
    "SimpleCNN",
    "WeightsReport",
    "add_attention",
    "add_cbam_to_resnet",
    "backbone_stages",
    "classifier",
    "create_model",
    "freeze_backbone",
    "from_config",
    "gradcam_target_layer",
    "list_models",
    "load_state_dict_file",
    "model_spec",
    "param_groups",
    "set_frozen_bn_eval",
    "unfreeze_stages",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
