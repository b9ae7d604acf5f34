"""What a decode may cost: `DecodeLimits`, and the limits a served model's uploads get.

Kept apart from the decoder (imaging.py, which enforces these limits and imports them from
here) because this is policy, not parsing: what a picture may weigh, and - in
`model_decode_limits` - the one place a served upload's limits come from (REST API,
/explain, the Lambda handler).

Served models: the pixel cap is derived from the model, `(MODEL_SIDE_FACTOR * input
side)²`, 32× the side - a 28 px model takes up to 896×896 pixels (or any shape of that
area), a 224 px one 7168×7168 - below the server's own `max_pixels` (an absolute ceiling)
and the Bundle's. Decoding costs time and memory in proportion to pixels while the model
only ever sees `image_size`², so a pixel past 1,024 times the model's input area is work
nobody uses: at 32× the resize already discards 99.9 % of what was decoded. A BOMB message
then names that cap and where it comes from (`pixels_from`). `reduce_jpeg` is on for
served models: a JPEG over the cap is decoded at a smaller DCT scale instead of refused
(imaging.py says how).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["MODEL_SIDE_FACTOR", "DecodeLimits", "ModelInput", "model_decode_limits"]

#: a served model takes pictures of up to (this × its input side)² pixels (module docstring)
MODEL_SIDE_FACTOR = 32


@dataclass(frozen=True)
class DecodeLimits:
    """What a decode may cost. `reduce_jpeg`: a JPEG over `max_pixels` is decoded at a
    smaller DCT scale instead of refused; `pixels_from`: where `max_pixels` comes from,
    for the BOMB message (see `model_decode_limits`)."""

    max_pixels: int = 64_000_000
    max_bytes: int | None = None
    min_side: int = 1
    reduce_jpeg: bool = False
    pixels_from: str | None = None

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.min_side < 1:
            raise ValueError("max_pixels and min_side must be at least 1")
        if self.max_bytes is not None and self.max_bytes < 0:
            raise ValueError("max_bytes must be None or >= 0")


class ModelInput(Protocol):
    """What `model_decode_limits` reads of a model's input (a Bundle's `InputSpec`)."""

    @property
    def image_size(self) -> int: ...

    @property
    def max_pixels(self) -> int: ...

    @property
    def max_bytes(self) -> int | None: ...


def model_decode_limits(spec: ModelInput, *, max_pixels: int, max_bytes: int | None
                        ) -> DecodeLimits:
    """The limits an upload to a served model is decoded under - every serving path's.

    `max_pixels` and `max_bytes` are the server's own (an absolute ceiling and its upload
    limit). The pixel cap is the smallest of that ceiling, the Bundle's `max_pixels` and
    `(MODEL_SIDE_FACTOR * spec.image_size)²`: the module docstring says why. JPEGs over
    the cap are decoded at reduced scale rather than refused (`reduce_jpeg`).
    """
    side = MODEL_SIDE_FACTOR * spec.image_size
    cap = min(max_pixels, spec.max_pixels, side * side)
    if cap == side * side:
        why = (f"{side}×{side}: {MODEL_SIDE_FACTOR}× the model's {spec.image_size} px "
               "input side")
    elif cap == max_pixels:
        why = "the server's max_pixels (VISIONDECK_MAX_PIXELS)"
    else:
        why = "the Bundle's input.max_pixels"
    byte_cap = max_bytes
    if spec.max_bytes is not None:
        byte_cap = spec.max_bytes if max_bytes is None else min(max_bytes, spec.max_bytes)
    return DecodeLimits(max_pixels=cap, max_bytes=byte_cap, reduce_jpeg=True, pixels_from=why)
