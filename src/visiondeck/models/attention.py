"""Attention blocks (CBAM, squeeze-excitation, ECA) and where each backbone family gets them.

`add_attention(model, kind)` places one block per resolution stage of any convolutional
backbone VisionDeck builds, at the place the papers put it for that family:

- ResNet (timm and torchvision): at the end of `layer1..layer4` (CBAM paper, Fig. 3);
- DenseNet: right after each dense block, before its transition (and after the last block,
  before the final norm): the concatenated features are what the block hands on;
- EfficientNet / EfficientNet-Lite / MobileNet (timm `blocks` stages, torchvision `features`
  stages), ConvNeXt and other timm CNNs: after the last stage of each output resolution,
  as listed by timm's own `feature_info` (the stem is left alone: at stride 2 the maps are
  too large and too generic for attention to pay);
- a torchvision `features` stack without stages (MobileNetV3): once, before the head.

Blocks are *added*, never wrapped around existing modules: appended to a stage's
`nn.Sequential` (`layer4.cbam`) or inserted after a module in its parent `nn.Sequential`
(`features.denseblock1_cbam`). Every existing state-dict key therefore stays as it was, so
ImageNet checkpoints still load and only the attention weights start fresh (the weights
loader recognises them with `is_attention_key`).

All three blocks use plain reductions (`mean`/`amax`), 1x1 convolutions and a Conv1d, so
they export to ONNX at any input size and work on channels_last tensors.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict

import torch
from torch import nn

from visiondeck.models.cbam import CBAM
from visiondeck.models.errors import ModelError

__all__ = [
    "ATTENTION_KINDS",
    "ECA",
    "SqueezeExcite",
    "add_attention",
    "attention_blocks",
    "is_attention_key",
    "make_attention",
    "site_name",
]

#: the values `model.attention` accepts besides "none"
ATTENTION_KINDS = ("cbam", "se", "eca")

# module name of each kind inside a stage; "cbam" is what ResNet+CBAM runs already saved
_SITE_NAMES = {"cbam": "cbam", "se": "se_attention", "eca": "eca_attention"}
_KEY = re.compile(r"(?:^|\.)(?:[^.]+_)?(?:cbam|se_attention|eca_attention)\.")


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al., CVPR 2018): channel gates from the mean descriptor."""

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8) -> None:
        super().__init__()
        hidden = max(min_hidden, channels // reduction)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(self.act(self.reduce(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class ECA(nn.Module):
    """Efficient channel attention (Wang et al., CVPR 2020): a 1-D convolution across the
    channel descriptor, with the paper's adaptive kernel size; a handful of weights."""

    def __init__(self, channels: int, gamma: int = 2, beta: int = 1) -> None:
        super().__init__()
        size = int(abs(math.log2(channels) / gamma + beta / gamma))
        size = size if size % 2 else size + 1
        self.conv = nn.Conv1d(1, 1, size, padding=size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        descriptor = x.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
        mixed = self.conv(descriptor.squeeze(-1).transpose(1, 2))  # (N, 1, C)
        return x * torch.sigmoid(mixed.transpose(1, 2).unsqueeze(-1))


def make_attention(kind: str, channels: int) -> nn.Module:
    """One attention block of `kind` for a `channels`-wide feature map."""
    if kind == "cbam":
        return CBAM(channels)
    if kind == "se":
        return SqueezeExcite(channels)
    if kind == "eca":
        return ECA(channels)
    raise ModelError(f"unknown attention {kind!r}", hint="use none, " + ", ".join(ATTENTION_KINDS))


def site_name(kind: str) -> str:
    """The module name an attention block of `kind` gets inside a stage."""
    return _SITE_NAMES[kind]


def is_attention_key(key: str) -> bool:
    """Whether a state-dict key belongs to an attention block VisionDeck added."""
    return bool(_KEY.search(key))


def attention_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, block) of every attention block VisionDeck added, input side first."""
    kinds = (CBAM, SqueezeExcite, ECA)
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, kinds)
        and name.rsplit(".", 1)[-1].endswith(tuple(_SITE_NAMES.values()))
    ]


# ---------------------------------------------------------------------------- placement


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def _is_stage(module: nn.Module) -> bool:
    """A Sequential of blocks (each block itself a container holding a conv)."""
    children = list(module.children())
    return (
        isinstance(module, nn.Sequential)
        and bool(children)
        and all(any(True for _ in c.children()) and _has_conv(c) for c in children)
    )


def _timm_sites(model: nn.Module) -> list[str]:
    """Module paths after which attention goes, from timm's `feature_info` (stem skipped)."""
    info = model.feature_info
    entries = info if isinstance(info, list) else info.get_dicts()
    sites = []
    for entry in entries:
        if entry.get("reduction", 1) < 4:
            continue
        path = _nearest_conv_block(model, entry["module"])
        if path is not None and path not in sites:
            sites.append(path)
    return sites


def _nearest_conv_block(model: nn.Module, path: str) -> str | None:
    """`path` if it holds a conv, else its nearest earlier sibling that does (DenseNet's
    `features.norm5` → `features.denseblock4`)."""
    module = model.get_submodule(path)
    if _has_conv(module):
        return path
    parent_path, _, _ = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    names = list(parent._modules)
    for name in reversed(names[: names.index(path.rpartition(".")[2])]):
        if _has_conv(parent._modules[name]):
            return f"{parent_path}.{name}" if parent_path else name
    return None


def _torchvision_sites(model: nn.Module) -> list[str]:
    """DenseNet's dense blocks, the stages of a `features` stack, else the stack's end."""
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        return []
    dense = [f"features.{n}" for n in features._modules if n.startswith("denseblock")]
    if dense:
        return dense
    stages = [f"features.{n}" for n, m in features.named_children() if _is_stage(m)]
    return stages or ["features"]


def _sites(model: nn.Module, name: str) -> list[str]:
    if type(model).__name__ == "ResNet" and all(
        isinstance(getattr(model, f"layer{i}", None), nn.Sequential) for i in range(1, 5)
    ):
        return [f"layer{i}" for i in range(1, 5)]
    has_info = getattr(model, "feature_info", None) and callable(
        getattr(model, "forward_features", None)
    )
    sites = _timm_sites(model) if has_info else _torchvision_sites(model)
    if not sites:
        raise ModelError(
            f"attention blocks are not supported for {name}",
            hint="they go into convolutional backbones (ResNet, DenseNet, EfficientNet, "
            "MobileNet, ConvNeXt, ours); use model.attention=none for transformers",
        )
    return sites


def _channels(model: nn.Module, paths: list[str]) -> dict[str, int]:
    """Output channels at each site, measured with one small forward pass (dense blocks
    concatenate, so no layer inside them states their output width)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ModelError("attention needs a convolutional backbone")
    found: dict[str, int] = {}
    hooks = [
        model.get_submodule(p).register_forward_hook(
            lambda _m, _i, out, p=p: found.__setitem__(p, int(out.shape[1]))
        )
        for p in paths
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, first.in_channels, 64, 64))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return found


def _insert_after(parent: nn.Sequential, child: str, name: str, block: nn.Module) -> None:
    """Insert `block` as `name` right after `child`, keeping every other key (and so every
    state-dict key) unchanged; `nn.Sequential.insert` would renumber named children."""
    items = list(parent._modules.items())
    at = [key for key, _ in items].index(child) + 1
    parent._modules = OrderedDict([*items[:at], (name, block), *items[at:]])


def add_attention(model: nn.Module, kind: str, name: str = "model") -> nn.Module:
    """Add `kind` attention ("cbam", "se", "eca") to every stage of `model`, in place.

    Idempotent: a site that already has a block of this kind is left alone. Returns the model.
    """
    if kind not in ATTENTION_KINDS:
        raise ModelError(
            f"unknown attention {kind!r}", hint="use none, " + ", ".join(ATTENTION_KINDS)
        )
    paths = _sites(model, name)
    widths = _channels(model, paths)
    label = site_name(kind)
    for path in paths:
        site = model.get_submodule(path)
        block = make_attention(kind, widths[path])
        if isinstance(site, nn.Sequential) and (_is_stage(site) or path == "features"):
            if label not in site._modules:
                site.add_module(label, block)
            continue
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        if not isinstance(parent, nn.Sequential):
            raise ModelError(
                f"cannot place attention after {path} in {name}",
                hint="use model.attention=none for this architecture",
            )
        if f"{child}_{label}" not in parent._modules:
            _insert_after(parent, child, f"{child}_{label}", block)
    return model
