"""Fixtures of the monitoring tests: the service fixtures (one Bundle exported from the
shared tiny run, apps per test) and image sets drawn from, or away from, its data."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tests.factories import png_bytes
from tests.serve.conftest import (  # noqa: F401  (fixtures shared with the service tests)
    bundle_copy,
    make_client,
    make_settings,
    serve_bundle,
    serve_lane,
)

_REGIONS = {"left": (slice(0, 8), slice(0, 8)), "middle": (slice(4, 12), slice(4, 12)),
            "right": (slice(8, 16), slice(8, 16))}


def in_distribution(n: int, seed: int) -> list[np.ndarray]:
    """Fresh 16 px images drawn exactly as `write_learnable` draws the training set."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        rows, cols = list(_REGIONS.values())[i % 3]
        image = rng.integers(0, 90, (16, 16, 3), dtype=np.uint8)
        image[rows, cols] = rng.integers(170, 256, (1, 1, 3), dtype=np.uint8)
        images.append(image)
    return images


def darkened(images: list[np.ndarray], factor: float = 0.4) -> list[np.ndarray]:
    return [(image * factor).astype(np.uint8) for image in images]


def rotated(images: list[np.ndarray]) -> list[np.ndarray]:
    return [np.ascontiguousarray(np.rot90(image)) for image in images]


def other_dataset(n: int, seed: int) -> list[np.ndarray]:
    """Crops of scikit-image's real photos, resized to the model's 16 px (so only the
    content differs from the training data, not the size)."""
    from skimage import data

    photos = [data.chelsea(), data.coffee(), data.astronaut()]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        photo = photos[i % len(photos)]
        y = int(rng.integers(0, photo.shape[0] - 64))
        x = int(rng.integers(0, photo.shape[1] - 64))
        crop = Image.fromarray(photo[y:y + 64, x:x + 64]).resize((16, 16))
        crops.append(np.asarray(crop))
    return crops


def post_images(client, images: list[np.ndarray], *, label: str | None = None) -> list[dict]:
    """Send images through /predict/batch (64 at a time); returns the predictions."""
    predictions = []
    for start in range(0, len(images), 64):
        files = [("files", (f"{start + i}.png", png_bytes(image)))
                 for i, image in enumerate(images[start:start + 64])]
        response = client.post("/predict/batch", files=files,
                               data={"label": label} if label else None)
        assert response.status_code == 200, response.text
        predictions += [item["prediction"] for item in response.json()["results"]]
    return predictions


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one series in a Prometheus text exposition (None when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        head, _, rest = series.partition("{")
        if head != name:
            continue
        found = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if part)
        if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
            return float(value)
    return None
