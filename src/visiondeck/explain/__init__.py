"""Grad-CAM and friends: where a network looked, as arrays and overlays.

The public API (all names resolve lazily; only `overlay`/`colorize` work without torch):

- `explain_image(model, image, spec, *, method="gradcam", target_layer=None,
  class_index=None, alpha=0.5) -> Explanation` — `image` uint8 (H, W, C) (resized to the
  model input if it is not already), `spec` a `PrepareSpec` or a Bundle's `InputSpec`;
  `Explanation.heatmap` float32 (H, W) in [0, 1], `.overlay` uint8 (H, W, 3), `.image`,
  `.class_index`, `.method`, `.target_layer_name`, `.logits`.
- `explain_batch(model, images, spec, ...) -> list[Explanation]` — one pass for many.
- `overlay(image, heatmap, alpha=0.5) -> uint8 RGB`, `colorize(heatmap)`, `png_bytes(image)`.
- `METHODS` — gradcam, gradcam++, hirescam, xgradcam, layercam, eigencam, eigengradcam,
  scorecam. `resolve_target_layer(model, name_or_None) -> (module, name)`.
- `load_explainable(run_or_bundle) -> ExplainableModel(model, classes, spec, ...)`,
  `load_model_from_bundle(bundle_dir)`, `explain_files(loaded, paths, out_dir, ...)`.

pytorch-grad-cam is imported only here (STYLE.md: one home per heavy library).
"""

from __future__ import annotations

from visiondeck._lazy import lazy_exports

_LAZY: dict[str, str] = {
    "METHODS": "cam",
    "ExplainError": "cam",
    "Explanation": "cam",
    "explain_batch": "cam",
    "explain_image": "cam",
    "model_image": "cam",
    "resolve_target_layer": "cam",
    "ExplainableModel": "loading",
    "is_bundle": "loading",
    "load_explainable": "loading",
    "load_model_from_bundle": "loading",
    "ExplainedFile": "files",
    "explain_files": "files",
    "load_model_image": "files",
    "colorize": "overlays",
    "overlay": "overlays",
    "png_bytes": "overlays",
    "to_rgb": "overlays",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
