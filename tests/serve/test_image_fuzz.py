"""Issue 18's done-when: hostile images never get a 5xx or a traceback from the service.

Several hundred mutants of small, genuine files of every accepted format (PNG, JPEG, GIF,
BMP, TIFF, WebP; `imaging.ALLOWED_FORMATS`), made by a seeded mutator - bit flips,
truncations, duplicated chunks or slices, header fields set to extreme values (for PNG
with the CRC recomputed, so the damage reaches past the chunk walk), inserted and deleted
bytes - are posted to a real app (`create_app`, lifespan run) on POST /predict (raw,
multipart and base64 JSON bodies, through the fast lane) and POST /predict/batch. Every
answer must be JSON with a prediction or an `error` and `detail`, and none a 5xx.

The model is the deploy tests' colour Bundle (8×8 RGB, built with `onnx.helper` in
milliseconds), so the model-derived pixel cap is small (256² pixels) and mutated headers
reach it.
"""

from __future__ import annotations

import base64
import io
import random
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from tests.deploy.conftest import CLASSES, write_colour_bundle
from visiondeck.imaging import ALLOWED_FORMATS, sniff_format

SEED = 18
MUTANTS_PER_BASE = 11
BATCH = 8


# ---------------------------------------------------------------------------- the seeds


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _bases() -> list[tuple[str, bytes]]:
    """Genuine small files: each format in the modes and layouts its decoder branches on."""
    rng = np.random.default_rng(SEED)
    rgb = Image.fromarray(rng.integers(0, 256, (18, 22, 3), dtype=np.uint8))
    grey = rgb.convert("L")
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (18, 22), dtype=np.uint8)))
    palette = rgb.quantize(16)
    frames = [Image.new("RGB", (12, 12), c) for c in ((200, 0, 0), (0, 200, 0))]
    exif = Image.Exif()
    exif[0x0112] = 6
    sixteen = Image.fromarray((np.arange(18 * 22, dtype=np.uint16) * 97).reshape(18, 22))
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "fuzz", zip=True)
    text.add_itxt("XML:com.adobe.xmp", '<x tiff:Orientation="3"/>', zip=True)
    bases = [
        ("png-rgb", _save(rgb, "PNG")), ("png-grey", _save(grey, "PNG")),
        ("png-rgba", _save(rgba, "PNG")), ("png-palette", _save(palette, "PNG")),
        ("png-16bit", _save(sixteen, "PNG")), ("png-bilevel", _save(grey.convert("1"), "PNG")),
        ("png-text", _save(rgb, "PNG", pnginfo=text)),
        ("apng", _save(frames[0], "PNG", save_all=True, append_images=frames[1:])),
        ("jpeg", _save(rgb, "JPEG", quality=80)),
        ("jpeg-progressive", _save(rgb, "JPEG", progressive=True)),
        ("jpeg-grey", _save(grey, "JPEG")), ("jpeg-cmyk", _save(rgb.convert("CMYK"), "JPEG")),
        ("jpeg-exif", _save(rgb, "JPEG", exif=exif)),
        ("gif", _save(palette, "GIF")),
        ("gif-animated", _save(frames[0], "GIF", save_all=True, append_images=frames[1:],
                               duration=50, loop=0)),
        ("gif-transparent", _save(palette, "GIF", transparency=0)),
        ("bmp", _save(rgb, "BMP")), ("bmp-palette", _save(palette, "BMP")),
        ("bmp-bilevel", _save(grey.convert("1"), "BMP")),
        ("tiff", _save(rgb, "TIFF")), ("tiff-lzw", _save(rgb, "TIFF", compression="tiff_lzw")),
        ("tiff-deflate", _save(rgba, "TIFF", compression="tiff_adobe_deflate")),
        ("tiff-packbits", _save(grey, "TIFF", compression="packbits")),
        ("tiff-16bit", _save(sixteen, "TIFF")),
        ("tiff-pages", _save(frames[0], "TIFF", save_all=True, append_images=frames[1:])),
        ("webp-lossy", _save(rgb, "WEBP", quality=70)),
        ("webp-lossless", _save(rgba, "WEBP", lossless=True)),
        ("webp-animated", _save(frames[0], "WEBP", save_all=True, append_images=frames[1:])),
    ]  # fmt: skip
    assert {sniff_format(data) for _, data in bases} == ALLOWED_FORMATS
    return bases


# --------------------------------------------------------------------------- the mutator

_EXTREMES = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000,
             0xFFFFFFFF, 100_000, 65_536)


def _png_chunks(data: bytes) -> list[tuple[int, int]] | None:
    """(start, stop) of each whole chunk, or None when `data` is no well-formed PNG."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    spans, pos = [], 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        if pos + 12 + length > len(data):
            return None
        spans.append((pos, pos + 12 + length))
        pos += 12 + length
    return spans if pos == len(data) else None


def _with_crc(data: bytearray, start: int, stop: int) -> None:
    struct.pack_into(">I", data, stop - 4, zlib.crc32(data[start + 4:stop - 4]))


def _flip_bits(rnd: random.Random, data: bytearray) -> bytearray:
    for _ in range(rnd.randint(1, 8)):
        data[rnd.randrange(len(data))] ^= 1 << rnd.randrange(8)
    return data


def _truncate(rnd: random.Random, data: bytearray) -> bytearray:
    return data[:rnd.randrange(1, len(data))]


def _duplicate(rnd: random.Random, data: bytearray) -> bytearray:
    spans = _png_chunks(bytes(data))
    if spans:  # a whole chunk (CRC and all) again, at a chunk boundary
        start, stop = rnd.choice(spans)
        at = rnd.choice([s for s, _ in spans] + [len(data)])
    else:
        start = rnd.randrange(len(data))
        stop = min(len(data), start + rnd.randint(1, 96))
        at = rnd.randrange(len(data) + 1)
    return data[:at] + data[start:stop] + data[at:]


def _edit_header(rnd: random.Random, data: bytearray) -> bytearray:
    """A 1, 2 or 4-byte field near the start set to an extreme (sizes, depths, offsets)."""
    size = rnd.choice((1, 2, 4))
    spans = _png_chunks(bytes(data))
    if spans:  # inside a chunk's data, CRC recomputed: IHDR, PLTE, tRNS, acTL, IDAT...
        start, stop = rnd.choice(spans[:4])
        if stop - start - 12 < size:
            return _flip_bits(rnd, data)
        at = rnd.randrange(start + 8, stop - 4 - size + 1)
    else:
        at = rnd.randrange(0, max(1, min(len(data), 64) - size + 1))
    value = rnd.choice(_EXTREMES) & ((1 << (8 * size)) - 1)
    data[at:at + size] = value.to_bytes(size, rnd.choice(("big", "little")))
    if spans:
        _with_crc(data, start, stop)
    return data


def _splice(rnd: random.Random, data: bytearray) -> bytearray:
    at = rnd.randrange(len(data))
    if rnd.random() < 0.5:
        return data[:at] + bytearray(rnd.randbytes(rnd.randint(1, 32))) + data[at:]
    return data[:at] + data[at + rnd.randint(1, 32):]


MUTATORS: tuple[Callable[[random.Random, bytearray], bytearray], ...] = (
    _flip_bits, _truncate, _duplicate, _edit_header, _splice)


def mutants(rnd: random.Random, data: bytes, count: int) -> Iterator[bytes]:
    for i in range(count):
        blob = bytearray(data)
        for mutate in rnd.sample(MUTATORS, 1 + (i % 3 == 2)):  # one, or two in a row
            blob = mutate(rnd, blob) or bytearray(b"\0")
        yield bytes(blob)


def _corpus() -> list[tuple[str, bytes]]:
    rnd = random.Random(SEED)
    corpus = []
    for name, data in _bases():
        corpus.append((name, data))
        corpus += [(f"{name}~{i}", blob) for i, blob in
                   enumerate(mutants(rnd, data, MUTANTS_PER_BASE))]
    return corpus


# --------------------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from visiondeck.serve.app import create_app
    from visiondeck.serve.settings import ServeSettings

    folder = tmp_path_factory.mktemp("fuzz")
    bundle = write_colour_bundle(folder / "bundle")
    settings = ServeSettings(bundle=str(bundle), data_dir=folder / "data",
                             watch_interval_s=0, preprocess_threads=2, intra_op_threads=1,
                             rate_limit=None)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def _check(name: str, status: int, body: object) -> str:
    """The one shape every answer must have; returns what kind it was."""
    assert status < 500, (name, status, body)
    assert isinstance(body, dict), (name, body)
    if status == 200:
        assert body["predicted"] in CLASSES and body["top_k"], (name, body)
        return "ok"
    assert isinstance(body.get("error"), str) and body.get("detail"), (name, status, body)
    return str(body["error"])


def _post_one(client: TestClient, i: int, data: bytes):
    kind = i % 3
    if kind == 0:
        return client.post("/predict", content=data,
                           headers={"content-type": "application/octet-stream"})
    if kind == 1:
        return client.post("/predict", files={"file": ("upload", data, "image/png")})
    return client.post("/predict", json={"image": base64.b64encode(data).decode()})


def test_mutated_images_of_every_format_get_json_answers_never_5xx(
        fuzz_client: TestClient) -> None:
    corpus = _corpus()
    assert len(corpus) >= 300
    kinds: Counter[str] = Counter()
    for i, (name, data) in enumerate(corpus):
        answer = _post_one(fuzz_client, i, data)
        assert answer.headers["content-type"].startswith("application/json"), name
        kinds[_check(name, answer.status_code, answer.json())] += 1
        if "~" not in name:  # the genuine file itself
            assert answer.status_code == 200, (name, answer.json())
    # the mutants reach every kind of refusal, and many still decode
    assert kinds["ok"] >= 60 and {"corrupt", "truncated", "not_an_image"} <= set(kinds), kinds


def test_mutated_images_in_batches_fail_alone(fuzz_client: TestClient) -> None:
    corpus = _corpus()
    random.Random(SEED + 1).shuffle(corpus)
    items = 0
    for start in range(0, len(corpus), BATCH):
        chunk = corpus[start:start + BATCH]
        answer = fuzz_client.post("/predict/batch", files=[
            ("files", (f"f{j}", data, "application/octet-stream")) for j, (_, data) in
            enumerate(chunk)])
        body = answer.json()
        assert answer.status_code < 500, body
        if answer.status_code != 200:
            _check(f"batch {start}", answer.status_code, body)
            continue
        assert len(body["results"]) == len(chunk)
        for (name, _), item in zip(chunk, body["results"], strict=True):
            items += 1
            if item["ok"]:
                _check(name, 200, item["prediction"])
            else:
                _check(name, item["status"], item["error"])
    assert items >= len(corpus) * 0.9  # nearly every batch was answered item by item


def test_the_fuzz_reaches_the_models_pixel_cap(fuzz_client: TestClient) -> None:
    """Mutated size fields land past the 256² cap of the 8 px model: 422 bomb, not a decode."""
    huge = bytearray(_save(Image.new("RGB", (16, 16)), "PNG"))
    struct.pack_into(">II", huge, 16, 5000, 5000)
    _with_crc(huge, 8, 33)
    answer = fuzz_client.post("/predict", content=bytes(huge),
                              headers={"content-type": "application/octet-stream"})
    assert answer.status_code == 422 and answer.json()["error"] == "bomb"
    assert "256×256" in answer.json()["detail"]


def test_the_corpus_is_reproducible() -> None:
    first, second = _corpus(), _corpus()
    assert first == second and len({data for _, data in first}) > 0.95 * len(first)
