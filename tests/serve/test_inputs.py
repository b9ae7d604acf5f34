"""Bad and unusual uploads: always a 4xx JSON error with a clear message, never a 500."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.factories import crafted_png, pattern, png_bytes
from tests.serve.conftest import learnable_png


@pytest.fixture(params=[True, False], ids=["lane", "route"])
def serve_lane(request: pytest.FixtureRequest) -> bool:
    """Every test here runs against the /predict lane and against the FastAPI route."""
    return request.param


@pytest.fixture
def decoder_calls(monkeypatch) -> list[int]:
    """Counts calls of the decoder the service uses."""
    import visiondeck.serve.inference.preprocess as preprocess

    calls: list[int] = []
    real = preprocess.decode_image

    def spy(data, **kwargs):
        calls.append(len(data))
        return real(data, **kwargs)

    monkeypatch.setattr(preprocess, "decode_image", spy)
    return calls


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    assert body["detail"]
    return body


def test_oversized_refused_by_content_length_before_decoding(make_client, decoder_calls) -> None:
    client = make_client(max_upload_bytes=2_000)
    big = png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert len(big) > 4_000
    response = client.post("/predict", content=big, headers={"content-type": "image/png"})
    body = _error(response, 413, "too_large")
    assert "limit" in body["detail"]
    multipart = client.post("/predict", files={"file": ("big.png", big * 3)})
    _error(multipart, 413, "too_large")
    assert decoder_calls == []  # refused before any decoding
    small = client.post("/predict", files={"file": learnable_png("left")})
    assert small.status_code == 200 and len(decoder_calls) == 1  # the spy does see decodes


def test_oversized_stream_without_length_is_counted(make_client, decoder_calls) -> None:
    client = make_client(max_upload_bytes=2_000)
    chunks = (b"\x89PNG\r\n\x1a\n" + b"\x00" * 8_000 for _ in range(4))
    response = client.post("/predict", content=chunks, headers={"content-type": "image/png"})
    _error(response, 413, "too_large")
    assert decoder_calls == []


def test_image_over_per_file_limit_inside_allowed_body(make_client, decoder_calls) -> None:
    """A base64 body may be larger than the image limit; the decoded image may not."""
    import base64

    client = make_client(max_upload_bytes=3_000)
    data = b"\x89PNG\r\n\x1a\n" + bytes(3_100)
    response = client.post("/predict", json={"image": base64.b64encode(data).decode()})
    _error(response, 413, "too_large")
    assert decoder_calls == []


@pytest.mark.parametrize(("content", "status", "code"), [
    (b"hello, I am a text file", 415, "not_an_image"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"/>', 415, "unsupported_format"),
    (b"%PDF-1.7\n", 415, "unsupported_format"),
    (b"", 422, "zero_bytes"),
    (png_bytes(pattern(3))[:60], 422, "truncated"),
    (crafted_png(32, 32, b"\x00\x00garbage" * 20), 422, "corrupt"),
    (crafted_png(100_000, 100_000, zlib.compress(b"")), 422, "bomb"),
])
def test_bad_images(client, content, status, code) -> None:
    response = client.post("/predict", files={"file": ("photo.png", content, "image/png")})
    body = _error(response, status, code)
    assert body["hint"]


def test_bomb_limit_comes_from_settings(make_client) -> None:
    client = make_client(max_pixels=100)
    response = client.post("/predict", files={"file": learnable_png("left")})  # 256 pixels
    _error(response, 422, "bomb")


def _encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def test_unusual_but_valid_images_are_predicted(client) -> None:
    rgb = Image.fromarray(pattern(11, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [Image.fromarray(pattern(i, 24)) for i in range(3)]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:])
    gray16 = Image.fromarray((np.linspace(0, 65535, 30 * 30).reshape(30, 30)).astype(np.uint16))
    rgba = Image.fromarray(np.dstack([pattern(12, 20), np.full((20, 20), 90, np.uint8)]),
                           "RGBA")
    cases = {
        "cmyk.jpg": _encoded(rgb.convert("CMYK"), "JPEG"),
        "exif.jpg": _encoded(rgb, "JPEG", exif=exif),
        "animated.gif": animated.getvalue(),
        "gray16.png": _encoded(gray16, "PNG"),
        "alpha.png": _encoded(rgba, "PNG"),
        "palette.png": _encoded(rgb.quantize(8), "PNG"),
        "photo.webp": _encoded(rgb, "WEBP"),
        "photo.bmp": _encoded(rgb, "BMP"),
        "photo.tiff": _encoded(rgb, "TIFF"),
    }
    for name, data in cases.items():
        response = client.post("/predict", files={"file": (name, data)})
        assert response.status_code == 200, (name, response.text)


def test_type_is_sniffed_not_taken_from_the_name(client) -> None:
    png = learnable_png("left")
    response = client.post("/predict", files={"file": ("report.pdf", png, "application/pdf")})
    assert response.status_code == 200
    fake = client.post("/predict", files={"file": ("cat.jpg", b"MZ\x90\x00 executable")})
    _error(fake, 415, "not_an_image")


@pytest.mark.parametrize(("kwargs", "status", "code"), [
    ({"content": b"a=1", "headers": {"content-type": "application/x-www-form-urlencoded"}},
     415, "unsupported_media_type"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}},
     400, "bad_json"),
    ({"json": ["a list"]}, 422, "bad_json"),
    ({"json": {"image": "%%% not base64 %%%"}}, 422, "bad_base64"),
    ({"json": {"something": "else"}}, 422, "no_image"),
    ({"files": {"notes": ("a.txt", b"text")}}, 422, "no_image"),
    ({"content": b"--xx\r\nbroken", "headers": {
        "content-type": "multipart/form-data; boundary=xx"}}, 400, "bad_multipart"),
    ({"content": b"--xx\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n"
                 b"\r\nabc\r\n--xx--\r\n",
      "headers": {"content-type": "multipart/form-data"}}, 400, "bad_multipart"),
    ({"content": b"--xx\r\nX-Other: 1\r\n\r\nabc\r\n--xx--\r\n",
      "headers": {"content-type": "multipart/form-data; boundary=xx"}}, 400, "bad_multipart"),
])
def test_malformed_requests(client, kwargs, status, code) -> None:
    _error(client.post("/predict", **kwargs), status, code)


def test_invalid_parameters_are_422_json(client) -> None:
    response = client.post("/predict?top_k=0", files={"file": learnable_png("left")})
    body = _error(response, 422, "invalid_request")
    assert body["detail"][0]["loc"][-1] == "top_k"
    missing = client.get("/nowhere")
    _error(missing, 404, "http_404")
