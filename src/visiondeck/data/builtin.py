"""Built-in data sets: Fashion-MNIST, CIFAR-10 (`cifar.py`) and the small bundled sample.

They exist so that a new user can try every VisionDeck step without bringing data, and
so that tests and docs have a fixed, licence-clean reference. Everything works offline:
Fashion-MNIST is found on disk (Debian's ``dataset-fashion-mnist`` package, a folder the
user points at, or VisionDeck's cache) and only fetched when explicitly asked. Files are
checked against the digests of their *decompressed* content, which stay valid however a
mirror or distribution re-compressed them.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.resources
import os
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal

import numpy as np

from visiondeck.data.download import download_to_temporary
from visiondeck.data.idx import read_idx, read_idx_bytes
from visiondeck.errors import DataError, DatasetNotFoundError

__all__ = [
    "BUILTIN_DATASETS",
    "ENV_VAR",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_FOLDERS",
    "FASHION_MNIST_SHA256",
    "OFFICIAL_URL",
    "SAMPLE_FILES",
    "SYSTEM_DIRS",
    "ArrayDataset",
    "default_cache_dir",
    "download_fashion_mnist",
    "find_fashion_mnist",
    "load_builtin",
    "load_fashion_mnist",
    "load_sample",
]

OFFICIAL_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
ENV_VAR = "VISIONDECK_FASHION_MNIST"
#: Folders searched after `root` and $VISIONDECK_FASHION_MNIST (tests patch this).
SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)
BUILTIN_DATASETS: tuple[str, ...] = ("fashion-mnist", "cifar10", "sample")

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FASHION_MNIST_FOLDERS: tuple[str, ...] = (
    "tshirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)  # fmt: skip
#: subset -> (images file, labels file), without the ``.gz`` suffix
FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: sha256 of the decompressed official files
FASHION_MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
#: the bundled sample: images, labels, positions in the official train file
SAMPLE_FILES: tuple[str, str, str] = (
    "sample-images-idx3-ubyte.gz",
    "sample-labels-idx1-ubyte.gz",
    "sample-indices-idx1-int.gz",
)

_ALL_FILES = tuple(name for pair in FASHION_MNIST_FILES.values() for name in pair)
_OFFLINE_HINT = (
    "Install it with `apt-get install dataset-fashion-mnist`, or download "
    + ", ".join(f"{n}.gz" for n in _ALL_FILES)
    + f" from {OFFICIAL_URL} into a folder and pass it with --root/--data-root "
    f"(or set ${ENV_VAR}), or use download=True (--download) where there is internet."
)
# (resolved path, mtime_ns, size) -> sha256 of the decompressed content
_DIGESTS: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """An in-memory labelled image set (equality is identity: arrays have no plain ==)."""

    name: str
    images: np.ndarray  # uint8 (N, H, W) grayscale or (N, H, W, 3)
    labels: np.ndarray  # int64 (N,)
    classes: tuple[str, ...]  # display names in index order
    folder_names: tuple[str, ...]  # filesystem-safe names, same order
    #: positions in the original file when this set is a subset of one (the sample)
    source_indices: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels) or len(self.classes) != len(self.folder_names):
            raise DataError(f"{self.name}: images/labels or classes/folders differ in length.")

    def __len__(self) -> int:
        return len(self.labels)


def default_cache_dir() -> Path:
    """Where downloads go by default: $XDG_CACHE_HOME (if absolute) or ~/.cache."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "visiondeck" / "fashion-mnist"


def _member(folder: Path, base: str) -> Path | None:
    # Uncompressed first: it is the faster read when someone gunzipped the files.
    for candidate in (folder / base, folder / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_fashion_mnist(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the first folder holding all four Fashion-MNIST files (.gz or plain).

    Order: `root`, $VISIONDECK_FASHION_MNIST, `SYSTEM_DIRS`, `default_cache_dir()`. A `root`
    that lacks files falls through to the others: they are digest-checked at load time, so
    whichever copy is used, the data are the same.
    """
    places: list[tuple[str, Path]] = []
    if root is not None:
        places.append(("root", Path(root).expanduser()))
    if os.environ.get(ENV_VAR):
        places.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR]).expanduser()))
    places += [("system", p) for p in SYSTEM_DIRS] + [("cache", default_cache_dir())]
    looked = []
    for label, folder in places:
        if not folder.is_dir():
            looked.append(f"{folder} ({label}): no such folder")
            continue
        missing = [name for name in _ALL_FILES if _member(folder, name) is None]
        if not missing:
            return folder
        looked.append(f"{folder} ({label}): missing {', '.join(missing)}")
    raise DatasetNotFoundError(
        "Fashion-MNIST was not found. Looked in:\n  - " + "\n  - ".join(looked),
        hint=_OFFLINE_HINT,
    )


def _digest(path: Path, data: bytes | None = None) -> str:
    """Decompressed sha256 of `path`, cached per (path, mtime, size) for this process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _DIGESTS:
        _DIGESTS[key] = hashlib.sha256(read_idx_bytes(path) if data is None else data).hexdigest()
    return _DIGESTS[key]


def _is_valid(path: Path, base: str) -> bool:
    try:
        return _digest(path) == FASHION_MNIST_SHA256[base]
    except (OSError, DataError):
        return False


def _fetch(url: str, folder: Path, base: str, timeout: float) -> Path:
    with download_to_temporary(url, folder, prefix=base, timeout=timeout,
                               failed=f"Could not download {url}", hint=_OFFLINE_HINT) as tmp:
        try:
            digest = hashlib.sha256(read_idx_bytes(tmp)).hexdigest()
        except DataError:
            digest = "not a readable IDX/gzip file"
        if digest != FASHION_MNIST_SHA256[base]:
            raise DataError(
                f"{url} does not match the official {base} (sha256 {digest}); it was discarded.",
                hint="The mirror or a proxy served a different file; retry, or fetch the "
                "file by another route and pass its folder with --root.",
            )
        with tmp.open("rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
        final = folder / (f"{base}.gz" if gz else base)
        os.replace(tmp, final)
        return final


def download_fashion_mnist(
    dest: str | os.PathLike[str] | None = None,
    *,
    base_url: str = OFFICIAL_URL,
    timeout: float = 30,
) -> Path:
    """Fetch the four files into `dest` (default: the cache), skipping valid ones.

    Each file is streamed to a hidden temp file, verified, then renamed into place, so an
    interrupted or corrupted download never leaves a plausible-looking file behind. A
    present-but-invalid copy is removed once a valid one is in place, since the plain
    name would otherwise shadow the fresh ``.gz``.
    """
    folder = Path(dest).expanduser() if dest is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"Cannot create download folder {folder}: {exc}") from exc
    for base in _ALL_FILES:
        present = [p for p in (folder / base, folder / f"{base}.gz") if p.is_file()]
        if any(_is_valid(p, base) for p in present):
            continue
        final = _fetch(base_url.rstrip("/") + f"/{base}.gz", folder, base, timeout)
        for stale in present:
            if stale != final:
                stale.unlink(missing_ok=True)
    return folder


def _read_verified(folder: Path, base: str, verify: bool) -> np.ndarray:
    path = _member(folder, base)
    if path is None:
        raise DatasetNotFoundError(f"{folder} has no {base}(.gz).", hint=_OFFLINE_HINT)
    data = read_idx_bytes(path)
    if verify and (digest := _digest(path, data)) != FASHION_MNIST_SHA256[base]:
        raise DataError(
            f"{path} is not the official Fashion-MNIST {base}: its content has sha256 "
            f"{digest}, expected {FASHION_MNIST_SHA256[base]}.",
            hint="Delete it and fetch it again (`apt-get install --reinstall "
            "dataset-fashion-mnist`, or download=True); pass verify=False only if you "
            "changed it on purpose.",
        )
    try:
        return read_idx(data)
    except DataError as exc:
        raise DataError(f"{path}: {exc.message}", hint=exc.hint) from exc


def load_fashion_mnist(
    subset: Literal["train", "test"] = "train",
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    verify: bool = True,
) -> ArrayDataset:
    """Load one official subset, downloading into `root` (or the cache) only when asked."""
    if subset not in FASHION_MNIST_FILES:
        raise DataError(f"Unknown Fashion-MNIST subset {subset!r}.", hint="Use 'train' or 'test'.")
    try:
        folder = find_fashion_mnist(root)
    except DatasetNotFoundError:
        if not download:
            raise
        folder = download_fashion_mnist(root)
    image_file, label_file = FASHION_MNIST_FILES[subset]
    images = _read_verified(folder, image_file, verify)
    labels = _read_verified(folder, label_file, verify)
    fits = images.dtype == np.uint8 and images.ndim == 3 and len(images) == len(labels)
    if not fits or labels.ndim != 1 or (labels.size and labels.max() >= 10):
        raise DataError(
            f"The Fashion-MNIST {subset} files in {folder} do not fit together "
            f"(images {images.shape} {images.dtype}, labels {labels.shape}).",
            hint="Re-fetch the files; load with verify=True to find the odd one out.",
        )
    return ArrayDataset(
        name=f"fashion-mnist-{subset}",
        images=images,
        labels=labels.astype(np.int64),
        classes=FASHION_MNIST_CLASSES,
        folder_names=FASHION_MNIST_FOLDERS,
    )


def load_sample() -> ArrayDataset:
    """The 4,000-image sample shipped in the package: works with no data on disk at all."""
    folder = _sample_dir()
    try:
        images, labels, indices = (read_idx(folder.joinpath(n).read_bytes()) for n in SAMPLE_FILES)
    except (OSError, DataError) as exc:
        raise DatasetNotFoundError(
            f"The bundled sample is missing or damaged: {exc}",
            hint="Reinstall VisionDeck (or run scripts/make_sample.py in a source checkout).",
        ) from exc
    return ArrayDataset(
        name="sample",
        images=images,
        labels=labels.astype(np.int64),
        classes=FASHION_MNIST_CLASSES,
        folder_names=FASHION_MNIST_FOLDERS,
        source_indices=indices.astype(np.int64),
    )


def _builtin_key(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    if key in BUILTIN_DATASETS:
        return key
    close = difflib.get_close_matches(key, BUILTIN_DATASETS, n=1, cutoff=0.5)
    hint = f"Did you mean {close[0]!r}? " if close else ""
    raise DataError(
        f"Unknown built-in data set {name!r}.",
        hint=f"{hint}Built-in data sets: {', '.join(BUILTIN_DATASETS)}.",
    )


def load_builtin(
    name: str,
    subset: str = "train",
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> ArrayDataset:
    """Load a built-in data set by name; the sample has no subsets (only 'train' accepted).

    CIFAR-10 is downloaded (MD5-checked) when no copy is found, whatever `download` says:
    the seed recipe expects `builtin:cifar10` to just work where there is a connection.
    """
    key = _builtin_key(name)
    if key == "sample":
        if subset != "train":
            raise DataError(f"The sample has no {subset!r} subset.", hint="Omit the subset.")
        return load_sample()
    if key == "cifar10":
        from visiondeck.data.cifar import load_cifar10

        return load_cifar10(subset, root=root)  # type: ignore[arg-type]
    return load_fashion_mnist(subset, root=root, download=download)  # type: ignore[arg-type]


def _sample_dir() -> Traversable:
    return importlib.resources.files("visiondeck.data").joinpath("sample")
