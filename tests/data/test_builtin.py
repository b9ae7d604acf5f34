"""Built-in data sets: locating, verifying, downloading, the bundled sample, materialising.

Real-data tests use Debian's ``dataset-fashion-mnist`` files; download tests run against a
real HTTP server on 127.0.0.1 serving small generated IDX files whose digests are patched
into the table (the real table is checked against the Debian files separately).
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import importlib.util
import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from visiondeck.data import builtin
from visiondeck.data.builtin import (
    ENV_VAR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    FASHION_MNIST_FOLDERS,
    FASHION_MNIST_SHA256,
    SAMPLE_FILES,
    ArrayDataset,
    download_fashion_mnist,
    find_fashion_mnist,
    load_builtin,
    load_fashion_mnist,
    load_sample,
)
from visiondeck.data.idx import read_idx_bytes, write_idx
from visiondeck.data.materialize import materialize
from visiondeck.errors import DataError, DatasetNotFoundError

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
ALL_FILES = [name for pair in FASHION_MNIST_FILES.values() for name in pair]
# Outside CI a missing package skips; in CI (`make test` installs it) it must fail instead.
needs_debian = pytest.mark.skipif(
    not DEBIAN.is_dir() and not os.environ.get("CI"),
    reason="needs Debian's dataset-fashion-mnist package",
)
SAMPLE_DIR = Path(builtin.__file__).parent / "sample"
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_sample.py"


@pytest.fixture(autouse=True)
def isolated_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may see the developer's env var, cache or the system copy unless it asks."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(builtin, "SYSTEM_DIRS", (tmp_path / "system",))


@pytest.fixture(scope="module")
def official_train() -> ArrayDataset:
    if not DEBIAN.is_dir() and not os.environ.get("CI"):
        pytest.skip("needs Debian's dataset-fashion-mnist package")
    return load_fashion_mnist("train", root=DEBIAN)


# -- the real files -----------------------------------------------------------------------


@needs_debian
def test_digest_table_matches_the_debian_files() -> None:
    for name in ALL_FILES:
        data = read_idx_bytes(DEBIAN / f"{name}.gz")
        assert hashlib.sha256(data).hexdigest() == FASHION_MNIST_SHA256[name]


@needs_debian
def test_load_official_train_and_test(official_train: ArrayDataset) -> None:
    test = load_fashion_mnist("test", root=DEBIAN)
    for ds, n, name in ((official_train, 60000, "train"), (test, 10000, "test")):
        assert ds.name == f"fashion-mnist-{name}" and len(ds) == n
        assert ds.images.shape == (n, 28, 28) and ds.images.dtype == np.uint8
        assert ds.labels.dtype == np.int64
        assert np.bincount(ds.labels).tolist() == [n // 10] * 10
        assert ds.classes == FASHION_MNIST_CLASSES and ds.folder_names == FASHION_MNIST_FOLDERS
    assert FASHION_MNIST_CLASSES[0] == "T-shirt/top" and FASHION_MNIST_CLASSES[9] == "Ankle boot"
    assert test.labels[:3].tolist() == [9, 2, 1]  # the well-known first test labels


@needs_debian
def test_default_search_finds_the_system_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin, "SYSTEM_DIRS", (DEBIAN,))
    assert find_fashion_mnist() == DEBIAN
    assert len(load_builtin("Fashion_MNIST", "test")) == 10000


# -- search order -------------------------------------------------------------------------


def _fake_root(folder: Path, gz: bool = True) -> Path:
    folder.mkdir(parents=True)
    for i, name in enumerate(ALL_FILES):
        (folder / (f"{name}.gz" if gz or i % 2 else name)).write_bytes(b"x")
    return folder


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _fake_root(tmp_path / "xdg-cache" / "visiondeck" / "fashion-mnist")
    assert find_fashion_mnist() == cache
    system = _fake_root(tmp_path / "system", gz=False)  # plain and .gz mixed still qualify
    assert find_fashion_mnist() == system
    env = _fake_root(tmp_path / "env")
    monkeypatch.setenv(ENV_VAR, str(env))
    assert find_fashion_mnist() == env
    root = _fake_root(tmp_path / "root")
    assert find_fashion_mnist(root) == root
    assert find_fashion_mnist(str(root)) == root
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "train-images-idx3-ubyte.gz").write_bytes(b"x")
    assert find_fashion_mnist(incomplete) == env  # falls through to the next place


def test_not_found_anywhere_lists_places_and_hint(tmp_path: Path) -> None:
    partial_root = tmp_path / "mine"
    partial_root.mkdir()
    (partial_root / "t10k-labels-idx1-ubyte").write_bytes(b"x")
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist("train", root=partial_root)
    text = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in text
    assert builtin.OFFICIAL_URL in text and "train-images-idx3-ubyte.gz" in text
    assert "--root" in text and "download=True" in text
    assert f"{partial_root} (root): missing train-images-idx3-ubyte" in text
    assert str(tmp_path / "system") in text
    assert str(tmp_path / "xdg-cache" / "visiondeck" / "fashion-mnist") in text


def test_cache_dir_ignores_relative_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    expected = Path.home() / ".cache" / "visiondeck" / "fashion-mnist"
    assert builtin.default_cache_dir() == expected


# -- verification -------------------------------------------------------------------------


@needs_debian
def test_tampered_copy_is_rejected(tmp_path: Path) -> None:
    root = tmp_path / "copy"
    root.mkdir()
    for name in ALL_FILES:
        if name != "t10k-images-idx3-ubyte":
            shutil.copy(DEBIAN / f"{name}.gz", root)
    plain = root / "t10k-images-idx3-ubyte"
    data = bytearray(read_idx_bytes(DEBIAN / "t10k-images-idx3-ubyte.gz"))
    plain.write_bytes(data)
    assert len(load_fashion_mnist("test", root=root)) == 10000  # valid, and now cached

    data[16 + 784 * 5 + 400] ^= 0xFF  # one pixel of image 5, same size
    stat = plain.stat()
    plain.write_bytes(data)
    os.utime(plain, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(DataError, match="not the official Fashion-MNIST t10k-images") as info:
        load_fashion_mnist("test", root=root)
    assert "sha256" in str(info.value)
    unchecked = load_fashion_mnist("test", root=root, verify=False)  # opt-out still reads it
    official = load_fashion_mnist("test", root=DEBIAN)
    assert np.argwhere(unchecked.images != official.images).tolist() == [[5, 14, 8]]


# -- download against a local server ------------------------------------------------------


def _tiny_set() -> dict[str, bytes]:
    """Small but well-formed stand-ins for the four files, decompressed."""
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(20, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(10, dtype=np.uint8)[::-1].copy(),
    }
    return {name: _idx_bytes(arr) for name, arr in arrays.items()}


def _idx_bytes(arr: np.ndarray) -> bytes:
    dims = b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return bytes([0, 0, 0x08, arr.ndim]) + dims + arr.tobytes()


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    files = _tiny_set()
    digests = {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    monkeypatch.setattr(builtin, "FASHION_MNIST_SHA256", digests)
    return files


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:
        _Handler.requests.append(self.path)


@pytest.fixture
def server(
    tmp_path: Path, tiny: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Path]]:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # urllib would send loopback via a proxy
    served = tmp_path / "served"
    served.mkdir()
    for name, data in tiny.items():
        (served / f"{name}.gz").write_bytes(gzip.compress(data))
    _Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_Handler, directory=str(served))
    )
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_download_success_then_skip(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, _ = server
    dest = tmp_path / "dl"
    assert download_fashion_mnist(dest, base_url=url, timeout=5) == dest
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"{n}.gz" for n in ALL_FILES)
    assert len(_Handler.requests) == 4
    download_fashion_mnist(dest, base_url=url, timeout=5)
    assert len(_Handler.requests) == 4  # all present and valid: nothing fetched
    ds = load_fashion_mnist("test", root=dest)
    assert len(ds) == 10 and ds.labels.tolist() == list(range(9, -1, -1))


def test_load_with_download_uses_the_cache(
    tmp_path: Path, server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = server
    local = partial(download_fashion_mnist, base_url=url.rstrip("/"), timeout=5)
    monkeypatch.setattr(builtin, "download_fashion_mnist", local)
    with pytest.raises(DatasetNotFoundError):
        load_fashion_mnist("train")
    ds = load_fashion_mnist("train", download=True)
    assert len(ds) == 20 and ds.images.shape == (20, 28, 28)
    assert find_fashion_mnist() == tmp_path / "xdg-cache" / "visiondeck" / "fashion-mnist"


def test_corrupt_download_is_rejected_and_removed(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, served = server
    data = bytearray(gzip.decompress((served / "t10k-images-idx3-ubyte.gz").read_bytes()))
    data[100] ^= 1
    (served / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(data)))
    dest = tmp_path / "dl"
    with pytest.raises(DataError, match="does not match the official t10k-images") as info:
        download_fashion_mnist(dest, base_url=url, timeout=5)
    assert not isinstance(info.value, DatasetNotFoundError)
    left = sorted(p.name for p in dest.iterdir())
    assert "t10k-images-idx3-ubyte.gz" not in left and not any(".part" in n for n in left)


def test_invalid_local_copy_is_replaced(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, _ = server
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x00")
    download_fashion_mnist(dest, base_url=url, timeout=5)
    assert not (dest / "train-labels-idx1-ubyte").exists()  # would shadow the fresh .gz
    assert len(load_fashion_mnist("train", root=dest)) == 20


def test_missing_on_server_and_server_down(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, served = server
    (served / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="404") as info:
        download_fashion_mnist(tmp_path / "dl", base_url=url, timeout=5)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    assert not any(".part" in p.name for p in (tmp_path / "dl").iterdir())

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DatasetNotFoundError, match="Could not download") as info:
        download_fashion_mnist(tmp_path / "dl2", base_url=f"http://127.0.0.1:{port}", timeout=5)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    assert list((tmp_path / "dl2").iterdir()) == []


# -- the bundled sample -------------------------------------------------------------------


def test_sample_shape_and_balance() -> None:
    sample = load_sample()
    assert sample.name == "sample" and len(sample) == 4000
    assert sample.images.shape == (4000, 28, 28) and sample.images.dtype == np.uint8
    assert np.bincount(sample.labels).tolist() == [400] * 10
    assert sample.classes == FASHION_MNIST_CLASSES
    idx = sample.source_indices
    assert idx is not None and np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < 60000
    total = sum((SAMPLE_DIR / name).stat().st_size for name in SAMPLE_FILES)
    assert total < 2_000_000
    assert "MIT" in (SAMPLE_DIR / "README.md").read_text() and (SAMPLE_DIR / "LICENSE").is_file()


@needs_debian
def test_sample_is_real_fashion_mnist(official_train: ArrayDataset) -> None:
    sample = load_sample()
    idx = sample.source_indices
    assert idx is not None
    np.testing.assert_array_equal(sample.images, official_train.images[idx])
    np.testing.assert_array_equal(sample.labels, official_train.labels[idx])


@needs_debian
def test_make_sample_regenerates_byte_identical_files(
    official_train: ArrayDataset, tmp_path: Path
) -> None:
    spec = importlib.util.spec_from_file_location("make_sample", SCRIPT)
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # importing must not run anything
    idx = script.select_indices(official_train.labels)
    np.testing.assert_array_equal(idx, load_sample().source_indices)
    arrays = (official_train.images[idx], official_train.labels[idx].astype(np.uint8), idx)
    for arr, name in zip(arrays, SAMPLE_FILES, strict=True):
        assert write_idx(arr, tmp_path / name).read_bytes() == (SAMPLE_DIR / name).read_bytes()


def test_load_builtin_names() -> None:
    assert len(load_builtin(" Sample ")) == 4000
    with pytest.raises(DataError) as info:
        load_builtin("fashon-mnist")
    assert "Did you mean 'fashion-mnist'?" in str(info.value)
    with pytest.raises(DataError, match="no 'test' subset"):
        load_builtin("sample", "test")
    with pytest.raises(DataError, match="Unknown Fashion-MNIST subset"):
        load_fashion_mnist("validation")  # type: ignore[arg-type]


# -- materialize --------------------------------------------------------------------------


def _index(png: Path) -> int:
    return int(png.stem.rsplit("_", 1)[1])


def test_materialize_sample(tmp_path: Path) -> None:
    out = tmp_path / "sample"
    sample = load_sample()
    result = materialize("sample", out, progress=False)
    assert result.out_dir == out and result.files_written == 4000 and result.skipped_existing == 0
    assert result.counts == {"sample": {f: 400 for f in sorted(FASHION_MNIST_FOLDERS)}}
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == sorted(FASHION_MNIST_FOLDERS)
    assert json.loads((out / "classes.json").read_text()) == sorted(FASHION_MNIST_FOLDERS)
    assert "MIT" in (out / "README.txt").read_text()
    pngs = sorted(out.glob("*/*.png"))
    assert len(pngs) == 4000 and not list(out.rglob(".*"))
    for png in pngs:
        i = _index(png)
        assert png.name == f"sample_{i:05d}.png"
        assert png.parent.name == FASHION_MNIST_FOLDERS[sample.labels[i]]
        with Image.open(png) as im:
            assert im.mode == "L"
            np.testing.assert_array_equal(np.asarray(im), sample.images[i])

    again = materialize("sample", out, progress=False)
    assert (again.files_written, again.skipped_existing) == (0, 4000)

    victim = pngs[7]
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(victim)
    with pytest.raises(DataError, match="differ") as info:
        materialize("sample", out, progress=False, workers=1)
    assert "overwrite" in str(info.value)
    forced = materialize("sample", out, progress=False, overwrite=True)
    assert forced.files_written == 4000
    with Image.open(victim) as im:
        np.testing.assert_array_equal(np.asarray(im), sample.images[_index(victim)])


@needs_debian
def test_materialize_fashion_mnist_limited(tmp_path: Path, official_train: ArrayDataset) -> None:
    out = tmp_path / "fm"
    result = materialize("fashion-mnist", out, root=DEBIAN, limit_per_class=3, progress=True)
    assert result.files_written == 60
    assert result.counts == {
        s: {f: 3 for f in sorted(FASHION_MNIST_FOLDERS)} for s in ("train", "test")
    }
    assert json.loads((out / "classes.json").read_text()) == sorted(FASHION_MNIST_FOLDERS)
    test = load_fashion_mnist("test", root=DEBIAN)
    for subset, ds in (("train", official_train), ("test", test)):
        pngs = sorted((out / subset).glob("*/*.png"))
        assert len(pngs) == 30
        assert sorted(p.name for p in (out / subset).iterdir()) == sorted(FASHION_MNIST_FOLDERS)
        for folder, c in zip(FASHION_MNIST_FOLDERS, range(10), strict=True):
            first3 = np.flatnonzero(ds.labels == c)[:3]
            names = sorted(p.name for p in (out / subset / folder).iterdir())
            assert names == [f"{subset}_{i:05d}.png" for i in first3]
        for png in pngs:
            with Image.open(png) as im:
                np.testing.assert_array_equal(np.asarray(im), ds.images[_index(png)])
    only_test = materialize(
        "fashion-mnist", out, subsets=["test"], root=DEBIAN, limit_per_class=3, progress=False
    )
    assert (only_test.files_written, only_test.skipped_existing) == (0, 30)


def test_materialize_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no subsets"):
        materialize("sample", tmp_path, subsets=["train"], progress=False)
    with pytest.raises(DataError, match="at least 1"):
        materialize("sample", tmp_path, limit_per_class=0, progress=False)
    with pytest.raises(DataError, match="Did you mean 'sample'"):
        materialize("sampel", tmp_path, progress=False)
    with pytest.raises(DataError, match="Unknown Fashion-MNIST subset"):
        materialize("fashion-mnist", tmp_path, subsets=["valid"], progress=False)
