"""Heat-map colouring and overlays in numpy + Pillow (no torch, no OpenCV).

The API and the web page draw overlays for heat-maps they receive as arrays, and a serving
process should not need torch or OpenCV for that, so colouring lives apart from the CAM
computation. Grey (one-channel) pictures are repeated to RGB first, so an overlay is always
a colour image.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = ["colorize", "overlay", "png_bytes", "to_rgb"]


def _jet(values: np.ndarray) -> np.ndarray:
    """The classic "jet" map, blue (0) → cyan → yellow → red (1), as float RGB in 0..1."""
    x = values[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # r, g, b
    return np.clip(1.5 - np.abs(4.0 * x - centres), 0.0, 1.0)


def _inferno_like(values: np.ndarray) -> np.ndarray:
    """A perceptually ordered black → purple → orange → yellow map (for print and slides)."""
    stops = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]],
                     dtype=np.float32) / 255.0
    position = values * (len(stops) - 1)
    low = np.clip(np.floor(position).astype(int), 0, len(stops) - 2)
    frac = (position - low)[..., None]
    return stops[low] * (1 - frac) + stops[low + 1] * frac


_COLORMAPS = {"jet": _jet, "inferno": _inferno_like}


def colorize(heatmap: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """A float heat-map in [0, 1] (H, W) → uint8 RGB (H, W, 3)."""
    if colormap not in _COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; use one of {sorted(_COLORMAPS)}")
    values = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
    if values.ndim != 2:
        raise ValueError(f"a heat-map is (H, W); got shape {values.shape}")
    return (_COLORMAPS[colormap](values) * 255.0 + 0.5).astype(np.uint8)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) → uint8 (H, W, 3)."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"images must be uint8, not {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W[, 1|3|4]) image, got shape {array.shape}")
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])


def _fit(heatmap: np.ndarray, height: int, width: int) -> np.ndarray:
    values = np.asarray(heatmap, dtype=np.float32)
    if values.shape == (height, width):
        return values
    plane = Image.fromarray(values, mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(plane, dtype=np.float32)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, *,
            colormap: str = "jet") -> np.ndarray:
    """Blend a coloured heat-map over a picture: uint8 RGB (H, W, 3) at the picture's size.

    `alpha` is the heat-map's weight (0 = the picture only, 1 = the colours only). A
    heat-map of another size is resized bilinearly to the picture.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in 0..1, not {alpha}")
    rgb = to_rgb(image)
    colours = colorize(_fit(heatmap, rgb.shape[0], rgb.shape[1]), colormap)
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def png_bytes(image: np.ndarray, *, scale: int = 1) -> bytes:
    """Encode a uint8 image as PNG, optionally enlarged `scale` times (nearest: pixels stay
    visible, so a 28 px overlay is still readable in a report)."""
    picture = Image.fromarray(to_rgb(image))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale),
                                 Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
