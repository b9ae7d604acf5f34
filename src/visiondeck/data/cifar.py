"""CIFAR-10 as a built-in data set, read from its official *binary* version with numpy.

The CIFAR-10 "python version" is a pickle, and unpickling a downloaded file can run code,
so VisionDeck reads the binary version (`cifar-10-binary.tar.gz`, "suitable for C
programs") instead: fixed 3,073-byte records of one label byte and 32x32x3 pixel bytes
(the red plane, then green, then blue, row-major), five training batches and one test batch.

Where the files are looked for, in order: `root`, $VISIONDECK_CIFAR10, VisionDeck's cache
(`~/.cache/visiondeck/cifar10`); in each, the archive itself or its extracted
`cifar-10-batches-bin/` folder (or the `.bin` files directly). Members are read straight
out of the archive (nothing is extracted, so no archive path can escape). When nothing is
found, the archive is downloaded from the authors' page into the cache and checked against
its published MD5 before it is used; offline, the error says where to put the files.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path
from typing import Literal

import numpy as np

from visiondeck.data.download import download_to_temporary
from visiondeck.errors import DataError, DatasetNotFoundError

__all__ = [
    "CIFAR10_ARCHIVE",
    "CIFAR10_CLASSES",
    "CIFAR10_ENV_VAR",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "cifar10_cache_dir",
    "download_cifar10",
    "find_cifar10",
    "load_cifar10",
    "read_cifar10_records",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
#: the MD5 published on https://www.cs.toronto.edu/~kriz/cifar.html for the binary version
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_ENV_VAR = "VISIONDECK_CIFAR10"
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_FOLDER = "cifar-10-batches-bin"
_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
_RECORD = 1 + 32 * 32 * 3
_CHUNK = 1 << 20
_HINT = (
    f"Download {CIFAR10_URL} (MD5 {CIFAR10_MD5}) where there is internet and put it, or its "
    f"extracted {_FOLDER}/ folder, in {{cache}} (or any folder named by ${CIFAR10_ENV_VAR} "
    "or --data-root). Only the binary version is read: the python version is a pickle."
)


def cifar10_cache_dir() -> Path:
    """Where the archive is downloaded to (and looked for): ~/.cache/visiondeck/cifar10."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "visiondeck" / "cifar10"


def read_cifar10_records(
    data: bytes, name: str = "CIFAR-10 batch"
) -> tuple[np.ndarray, np.ndarray]:
    """Parse binary records: (uint8 images (N, 32, 32, 3), int64 labels (N,))."""
    if not data or len(data) % _RECORD:
        raise DataError(
            f"{name} is not CIFAR-10 binary data: {len(data)} bytes is not a "
            f"whole number of {_RECORD}-byte records",
            hint="use the files of cifar-10-binary.tar.gz, unchanged",
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= len(CIFAR10_CLASSES):
        raise DataError(
            f"{name} has label {int(labels.max())}; CIFAR-10 labels are 0-9",
            hint="is this the CIFAR-100 archive? Only CIFAR-10 is built in",
        )
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _places(root: str | os.PathLike[str] | None) -> list[tuple[str, Path]]:
    places: list[tuple[str, Path]] = []
    if root is not None:
        places.append(("root", Path(root).expanduser()))
    if os.environ.get(CIFAR10_ENV_VAR):
        places.append((f"${CIFAR10_ENV_VAR}", Path(os.environ[CIFAR10_ENV_VAR]).expanduser()))
    places.append(("cache", cifar10_cache_dir()))
    return places


def find_cifar10(root: str | os.PathLike[str] | None = None) -> Path:
    """The first archive or folder of `.bin` files holding all six batches."""
    looked = []
    wanted = [n for names in _FILES.values() for n in names]
    for label, place in _places(root):
        if place.is_file() and place.name.endswith((".tar.gz", ".tgz")):
            return place
        if not place.is_dir():
            looked.append(f"{place} ({label}): no such folder")
            continue
        if (place / CIFAR10_ARCHIVE).is_file():
            return place / CIFAR10_ARCHIVE
        for folder in (place / _FOLDER, place):
            if all((folder / n).is_file() for n in wanted):
                return folder
        looked.append(f"{place} ({label}): no {CIFAR10_ARCHIVE} and no {_FOLDER}/ folder")
    raise DatasetNotFoundError(
        "CIFAR-10 was not found. Looked in:\n  - " + "\n  - ".join(looked),
        hint=_HINT.format(cache=cifar10_cache_dir()),
    )


def download_cifar10(
    dest: str | os.PathLike[str] | None = None,
    *,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    timeout: float = 30,
) -> Path:
    """Fetch the archive into `dest` (default: the cache) and check its MD5 before use.

    Streamed to a hidden temporary file and renamed into place only when the digest
    matches, so an interrupted or altered download never looks like a good one.
    """
    folder = Path(dest).expanduser() if dest is not None else cifar10_cache_dir()
    final = folder / CIFAR10_ARCHIVE
    if final.is_file() and _md5(final) == md5:
        return final
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the download folder {folder}: {exc}") from exc
    with download_to_temporary(url, folder, prefix=CIFAR10_ARCHIVE, timeout=timeout,
                               failed=f"could not download CIFAR-10 from {url}",
                               hint=_HINT.format(cache=folder)) as tmp:
        digest = _md5(tmp)
        if digest != md5:
            raise DataError(
                f"{url} does not match the official CIFAR-10 archive (MD5 {digest}, "
                f"expected {md5}); it was discarded",
                hint=f"retry, or fetch the file by another route into {folder}",
            )
        os.replace(tmp, final)
        return final


def _read_archive(archive: Path, names: tuple[str, ...]) -> list[bytes]:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {
                Path(m.name).name: m
                for m in tar.getmembers()
                if m.isfile() and Path(m.name).parent.name == _FOLDER
            }
            missing = [n for n in names if n not in members]
            if missing:
                raise DataError(
                    f"{archive} lacks {', '.join(missing)}",
                    hint=f"use the official {CIFAR10_ARCHIVE}",
                )
            return [tar.extractfile(members[n]).read() for n in names]  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(
            f"{archive} is not a readable tar.gz archive ({exc})",
            hint=f"delete it and fetch {CIFAR10_URL} again",
        ) from exc


def load_cifar10(
    subset: Literal["train", "test"] = "train",
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    verify: bool = True,
):  # -> ArrayDataset (imported lazily: no cycle)
    """One official subset (train: 50,000 images, test: 10,000) as an `ArrayDataset`.

    download: fetch the archive when no copy is found (the check of its MD5 is not
    optional). verify: check a found archive's MD5 too; a folder of extracted `.bin`
    files is checked for its record structure (whole records, labels 0-9).
    """
    from visiondeck.data.builtin import ArrayDataset

    if subset not in _FILES:
        raise DataError(f"unknown CIFAR-10 subset {subset!r}", hint="use 'train' or 'test'")
    try:
        found = find_cifar10(root)
    except DatasetNotFoundError:
        if not download:
            raise
        found = download_cifar10()
    names = _FILES[subset]
    if found.is_file():
        if verify and (digest := _md5(found)) != CIFAR10_MD5:
            raise DataError(
                f"{found} is not the official CIFAR-10 binary archive (MD5 {digest},"
                f" expected {CIFAR10_MD5})",
                hint="delete it and download it again; pass verify=False only if "
                "you changed it on purpose",
            )
        blobs = _read_archive(found, names)
    else:
        blobs = [(found / n).read_bytes() for n in names]
    parts = [
        read_cifar10_records(blob, f"{found}:{n}") for blob, n in zip(blobs, names, strict=True)
    ]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    folders = tuple(CIFAR10_CLASSES)
    return ArrayDataset(f"cifar10-{subset}", images, labels, CIFAR10_CLASSES, folders)
