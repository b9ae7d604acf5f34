"""Heat-map colouring and overlays (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from visiondeck.explain.overlays import colorize, overlay, png_bytes, to_rgb


def test_colorize_runs_blue_to_red() -> None:
    colours = colorize(np.array([[0.0, 1.0]], dtype=np.float32))
    cold, hot = colours[0, 0].astype(int), colours[0, 1].astype(int)
    assert cold[2] > cold[0] and hot[0] > hot[2]  # blue at 0, red at 1
    assert colours.dtype == np.uint8 and colours.shape == (1, 2, 3)


def test_gray_image_gets_a_colour_overlay() -> None:
    gray = np.full((8, 8, 1), 128, dtype=np.uint8)
    heat = np.zeros((4, 4), dtype=np.float32)
    heat[:2, :2] = 1.0  # hot top-left, resized to the picture
    out = overlay(gray, heat, alpha=0.6)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] > out[0, 0, 2]  # red where hot
    assert out[7, 7, 2] > out[7, 7, 0]  # blue where cold
    assert np.array_equal(overlay(gray, heat, alpha=0.0), to_rgb(gray))


def test_overlay_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="alpha"):
        overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), alpha=2.0)
    with pytest.raises(TypeError):
        to_rgb(np.zeros((4, 4, 3), np.float32))


def test_png_bytes_scales_up() -> None:
    from io import BytesIO

    from PIL import Image

    data = png_bytes(np.zeros((5, 7, 1), np.uint8), scale=3)
    assert Image.open(BytesIO(data)).size == (21, 15)
