"""POST /explain: Grad-CAM overlay as PNG or base64 JSON, from the Bundle's weights."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from tests.serve.conftest import learnable_png


def test_explain_png_and_json(client) -> None:
    image = {"file": learnable_png("right")}
    png = client.post("/explain?format=png&scale=4", files=image)
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png"
    overlay = np.asarray(Image.open(io.BytesIO(png.content)))
    assert overlay.shape == (64, 64, 3)
    body = client.post("/explain", files=image).json()
    assert body["method"] == "gradcam" and body["class"] == png.headers["x-explained-class"]
    assert body["top_k"][0]["class"] in ("left", "middle", "right")
    heat = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png_base64"])))
    assert heat.size == (224, 224)  # 16 px input, enlarged for display by default
    another = next(c for c in ("left", "middle", "right") if c != body["class"])
    other = client.post(f"/explain?class={another}", files=image).json()
    assert other["class"] == another
    assert other["class_index"] == ["left", "middle", "right"].index(another)
    assert other["heatmap_png_base64"] != body["heatmap_png_base64"]  # another class's map


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"),
                      dtype=np.int16)


def test_the_overlay_is_the_blend_of_image_and_heatmap(client) -> None:
    """Known answers: alpha 0 is the picture itself, alpha 1 the coloured heat-map, and 0.5
    their mean, pixel for pixel (±1 for rounding)."""
    image = {"file": learnable_png("left")}
    picture = client.post("/explain?alpha=0", files=image).json()
    colours = client.post("/explain?alpha=1", files=image).json()
    half = client.post("/explain?alpha=0.5", files=image).json()
    source = _pixels(picture["image_png_base64"])
    assert source.shape == (224, 224, 3)
    assert np.array_equal(_pixels(picture["overlay_png_base64"]), source)
    heat = _pixels(colours["heatmap_png_base64"])
    assert np.array_equal(_pixels(colours["overlay_png_base64"]), heat)
    assert heat.std() > 0  # the map says something: not one flat colour
    mean = (source + heat) / 2
    assert np.abs(_pixels(half["overlay_png_base64"]) - mean).max() <= 1


def test_explain_errors(client) -> None:
    image = {"file": learnable_png("right")}
    bad_class = client.post("/explain?class=giraffe", files=image)
    assert bad_class.status_code == 422 and bad_class.json()["error"] == "bad_class"
    bad_method = client.post("/explain?method=magic", files=image)
    assert bad_method.status_code == 422 and bad_method.json()["error"] == "bad_method"
    not_image = client.post("/explain", files={"file": b"plain text"})
    assert not_image.status_code == 415


def test_explain_can_be_turned_off(make_client) -> None:
    client = make_client(explain=False)
    response = client.post("/explain", files={"file": learnable_png("left")})
    assert response.status_code == 404 and response.json()["error"] == "explain_disabled"


def test_explain_decodes_within_the_models_cap(client) -> None:
    """/explain uses the same model-derived cap as /predict: a picture far larger than the
    16 px model needs is refused before its pixels are decoded."""
    big = io.BytesIO()
    Image.new("L", (2000, 2000)).save(big, format="PNG")  # 4 M pixels > (32*16)^2
    for path in ("/explain", "/predict"):
        response = client.post(path, files={"file": ("big.png", big.getvalue())})
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "bomb"
        assert "262,144 (512×512" in response.json()["detail"]
