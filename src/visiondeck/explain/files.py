"""Explain image files and write the overlays as PNG (what `visiondeck explain` runs)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visiondeck.explain.cam import Explanation, explain_image
from visiondeck.explain.loading import ExplainableModel
from visiondeck.explain.overlays import png_bytes, to_rgb

__all__ = ["ExplainedFile", "explain_files", "load_model_image"]


@dataclass(frozen=True)
class ExplainedFile:
    source: Path
    output: Path | None  # None when the file could not be decoded
    explanation: Explanation | None
    error: str | None = None


def load_model_image(path: str | os.PathLike[str], spec) -> np.ndarray:
    """Decode a file with the safe decoder and resize it as training did: uint8 (S, S, C)."""
    from visiondeck.imaging import decode_image, resize_image

    decoded = decode_image(path, mode="L" if spec.channels == 1 else "RGB")
    return resize_image(decoded.array, spec.image_size, spec.resize)


def explain_files(
    loaded: ExplainableModel,
    images: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    method: str = "gradcam",
    target_layer: str | None = None,
    class_name: str | None = None,
    alpha: float = 0.5,
    scale: int | None = None,
) -> list[ExplainedFile]:
    """Write `OUT/<stem>.<method>.png` per image (side-by-side input | overlay).

    A file that cannot be decoded is reported in the result, never a crash, so one bad
    upload in a folder does not stop the rest. `scale` enlarges small inputs (default: to
    about 256 px) so the overlay can be seen.
    """
    from visiondeck.explain.cam import ExplainError
    from visiondeck.imaging import ImageDecodeError

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    class_index = None
    if class_name is not None:
        if class_name not in loaded.classes:
            raise ExplainError(f"unknown class {class_name!r}",
                               hint=f"classes: {', '.join(loaded.classes)}")
        class_index = loaded.classes.index(class_name)
    size = loaded.spec.image_size
    factor = scale or max(1, 256 // size)
    results: list[ExplainedFile] = []
    for image_path in map(Path, images):
        try:
            picture = load_model_image(image_path, loaded.spec)
        except (ImageDecodeError, OSError) as exc:
            results.append(ExplainedFile(image_path, None, None, str(exc).splitlines()[0]))
            continue
        explanation = explain_image(loaded.model, picture, loaded.spec, method=method,
                                    target_layer=target_layer, class_index=class_index,
                                    alpha=alpha)
        pair = np.concatenate([to_rgb(explanation.image), explanation.overlay], axis=1)
        target = out / f"{image_path.stem}.{method.replace('+', 'pp')}.png"
        target.write_bytes(png_bytes(pair, scale=factor))
        results.append(ExplainedFile(image_path, target, explanation))
    return results
