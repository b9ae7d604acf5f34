"""`builtin:cifar10`: the binary version parsed with numpy, found, downloaded with its MD5.

The files the tests write follow the official binary layout (one label byte, then the red,
green and blue 32x32 planes) with a few records per batch; the download is served by a
real HTTP server on loopback, so the checksum path runs without the internet.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from visiondeck.data import cifar
from visiondeck.data.builtin import load_builtin
from visiondeck.errors import DataError, DatasetNotFoundError

BATCHES = [*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin"]


def _records(seed: int, n: int = 4) -> tuple[bytes, np.ndarray, np.ndarray]:
    """n records of known pixels: (bytes, images (n, 32, 32, 3), labels)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    planes = images.transpose(0, 3, 1, 2).reshape(n, -1)  # R plane, G plane, B plane
    return np.hstack([labels[:, None], planes]).tobytes(), images, labels.astype(np.int64)


def _write_batches(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for seed, name in enumerate(BATCHES):
        data, images, labels = _records(seed)
        (folder / name).write_bytes(data)
        truth[name] = (images, labels)
    return truth


def _archive(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    truth = {}
    with tarfile.open(path, "w:gz") as tar:
        for seed, name in enumerate(BATCHES):
            data, images, labels = _records(seed)
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            truth[name] = (images, labels)
    return truth


@pytest.fixture(autouse=True)
def _no_user_copies(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(cifar.CIFAR10_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_records_are_parsed_plane_by_plane(tmp_path: Path) -> None:
    truth = _write_batches(tmp_path / "cifar-10-batches-bin")
    train = cifar.load_cifar10("train", root=tmp_path, download=False)
    test = load_builtin("cifar10", "test", root=tmp_path)
    expected = np.concatenate([truth[n][0] for n in BATCHES[:5]])
    np.testing.assert_array_equal(train.images, expected)
    np.testing.assert_array_equal(train.labels, np.concatenate([truth[n][1] for n in BATCHES[:5]]))
    np.testing.assert_array_equal(test.images, truth["test_batch.bin"][0])
    assert train.images.shape == (20, 32, 32, 3) and train.classes[3] == "cat"


def test_a_found_archive_is_read_in_place_and_md5_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / cifar.CIFAR10_ARCHIVE
    truth = _archive(archive)
    with pytest.raises(DataError, match="not the official CIFAR-10 binary archive"):
        cifar.load_cifar10("test", root=tmp_path, download=False)
    monkeypatch.setattr(cifar, "CIFAR10_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    test = cifar.load_cifar10("test", root=tmp_path, download=False)
    np.testing.assert_array_equal(test.images, truth["test_batch.bin"][0])
    assert not (tmp_path / "cifar-10-batches-bin").exists()  # read in place, not extracted


def test_damaged_files_are_refused_with_a_reason(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    _write_batches(folder)
    (folder / "test_batch.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(DataError, match="whole number of 3073-byte records"):
        cifar.load_cifar10("test", root=tmp_path, download=False)
    data, _, _ = _records(9)
    (folder / "test_batch.bin").write_bytes(bytes([42]) + data[1:])
    with pytest.raises(DataError, match="label 42"):
        cifar.load_cifar10("test", root=tmp_path, download=False)


def test_offline_the_error_says_where_to_put_the_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as info:
        cifar.load_cifar10("train", root=tmp_path / "none", download=False)
    assert str(cifar.cifar10_cache_dir()) in info.value.hint
    assert "cifar-10-binary.tar.gz" in info.value.hint and cifar.CIFAR10_MD5 in info.value.hint


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on loopback serving a small archive in the official layout."""
    site = tmp_path / "site"
    site.mkdir()
    _archive(site / cifar.CIFAR10_ARCHIVE)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(site), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{cifar.CIFAR10_ARCHIVE}", site
    server.shutdown()
    server.server_close()


def test_download_keeps_only_an_archive_with_the_right_md5(served, tmp_path: Path) -> None:
    url, site = served
    good = hashlib.md5((site / cifar.CIFAR10_ARCHIVE).read_bytes()).hexdigest()
    with pytest.raises(DataError, match="does not match the official CIFAR-10 archive"):
        cifar.download_cifar10(tmp_path / "dl", url=url, md5="0" * 32)
    assert list((tmp_path / "dl").iterdir()) == []  # nothing plausible-looking left behind
    path = cifar.download_cifar10(tmp_path / "dl", url=url, md5=good)
    assert path == tmp_path / "dl" / cifar.CIFAR10_ARCHIVE and path.is_file()
    with pytest.raises(DatasetNotFoundError, match="could not download"):
        cifar.download_cifar10(tmp_path / "dl2", url=url + ".missing", md5=good)


def test_the_seed_recipe_reads_builtin_cifar10() -> None:
    from visiondeck.config import load_recipe

    recipe = load_recipe(Path(__file__).parents[2] / "configs" / "cifar_simplecnn.yaml")
    assert recipe.data.source == "builtin:cifar10"
    assert recipe.data.test_source == "builtin:cifar10/test"
    assert (recipe.model.name, recipe.train.epochs) == ("simple_cnn", 10)


def test_builtin_source_becomes_class_folders_of_the_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from visiondeck.data.sources import open_source

    truth = _write_batches(tmp_path / "copy")
    monkeypatch.setenv(cifar.CIFAR10_ENV_VAR, str(tmp_path / "copy"))
    train = open_source("builtin:cifar10").root
    test = open_source("builtin:cifar10/test").root
    assert (train.name, test.name) == ("train", "test")
    images, labels = truth["test_batch.bin"]
    first = test / cifar.CIFAR10_CLASSES[labels[0]] / "test_00000.png"
    np.testing.assert_array_equal(np.asarray(Image.open(first)), images[0])
    assert sum(1 for _ in train.rglob("*.png")) == 20


def test_the_seed_recipe_trains_on_builtin_cifar10_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visiondeck.config import load_recipe
    from visiondeck.train.runner import train

    folder = tmp_path / "copy"
    folder.mkdir()
    for seed, name in enumerate(BATCHES):  # 20 pictures a batch, every class twice
        data, _, _ = _records(seed, n=20)
        records = np.frombuffer(data, np.uint8).reshape(20, -1).copy()
        records[:, 0] = np.arange(20) % 10
        (folder / name).write_bytes(records.tobytes())
    monkeypatch.setenv(cifar.CIFAR10_ENV_VAR, str(folder))
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(Path(__file__).parents[2] / "configs" / "cifar_simplecnn.yaml", [
        f"output_dir={tmp_path / 'runs'}", "tracking.enabled=false", "data.num_workers=0",
    ])  # fmt: skip
    result = train(recipe, progress=False, max_steps=2)
    info = (result.run_dir / "run.json").read_text()
    assert '"airplane"' in info and '"truck"' in info
    assert (result.run_dir / "model" / "weights.safetensors").is_file()
