"""Class-activation maps (Grad-CAM and friends) for any VisionDeck network.

pytorch-grad-cam does the CAM arithmetic; this module decides what it is given: the input
prepared exactly as in training (resize → normalise with the run's or Bundle's spec), the
target layer (the architecture's last convolutional block, from
`visiondeck.models.gradcam_target_layer`, or a dotted module name the caller picks), and the
class to explain (the predicted one unless asked). It returns arrays, not files, so the
CLI, the evaluation report and the REST API share one implementation.

CAM methods attach hooks to the model for the duration of a call; calls are serialised by
a lock so two threads explaining with the same network never see each other's hooks.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from visiondeck.errors import VisionDeckError
from visiondeck.explain.overlays import overlay

__all__ = [
    "METHODS",
    "ExplainError",
    "Explanation",
    "SpecLike",
    "explain_batch",
    "explain_image",
    "model_image",
    "resolve_target_layer",
]

#: method name → pytorch-grad-cam class name
METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "scorecam": "ScoreCAM",
}

_LOCK = threading.RLock()


class ExplainError(VisionDeckError):
    """A CAM cannot be computed as asked (unknown method or layer, missing library)."""

    exit_code = 2


class SpecLike(Protocol):
    """What preparation needs: `PrepareSpec` (runs) and `InputSpec` (Bundles) both fit."""

    image_size: int
    channels: int
    resize: str
    mean: Sequence[float]
    std: Sequence[float]


@dataclass(frozen=True)
class Explanation:
    """One explained picture, everything at the model's input size."""

    heatmap: np.ndarray  # float32 (H, W) in [0, 1]; 1 = most important for class_index
    overlay: np.ndarray  # uint8 (H, W, 3): the heat-map coloured over the input picture
    image: np.ndarray  # uint8 (H, W, C): the resized picture the model saw
    class_index: int  # the class explained
    method: str
    target_layer_name: str
    logits: np.ndarray  # float32 (K,): the model's raw output for this picture

    @property
    def predicted_index(self) -> int:
        return int(np.argmax(self.logits))


def model_image(image: np.ndarray, spec: SpecLike) -> np.ndarray:
    """A uint8 picture → uint8 (S, S, channels) as the model sees it (before normalising).

    Pictures already at the input size pass through unchanged; others are resized with the
    spec's policy (the same `imaging.resize_image` training used).
    """
    from PIL import Image

    from visiondeck.imaging import resize_image

    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ExplainError(f"images must be uint8, not {array.dtype}",
                           hint="decode with visiondeck.imaging.decode_image")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or 0 in array.shape[:2]:
        raise ExplainError(f"expected an (H, W[, 1|3|4]) image, got shape {array.shape}")
    if array.shape[2] == 4:
        array = array[:, :, :3]
    if spec.channels == 1 and array.shape[2] == 3:
        array = np.asarray(Image.fromarray(np.ascontiguousarray(array)).convert("L"))[:, :, None]
    elif spec.channels == 3 and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.shape[:2] != (spec.image_size, spec.image_size):
        array = resize_image(np.ascontiguousarray(array), spec.image_size, spec.resize)  # type: ignore[arg-type]
    return np.ascontiguousarray(array)


def _module_name(model: Any, layer: Any) -> str:
    for name, module in model.named_modules():
        if module is layer:
            return name or "<model>"
    return f"<{type(layer).__name__}>"


def _conv_blocks(model: Any) -> list[str]:
    from torch import nn

    return [name for name, module in model.named_modules()
            if name and any(isinstance(m, nn.Conv2d) for m in module.modules())]


def resolve_target_layer(model: Any, target_layer: Any = None) -> tuple[Any, str]:
    """(module, dotted name) of the layer to explain.

    None: the architecture's default (`visiondeck.models.gradcam_target_layer`); a string:
    that dotted module name (e.g. "stages.1", "blocks.5"); a module: used as is.
    """
    from torch import nn

    from visiondeck.models import ModelError, gradcam_target_layer

    if target_layer is None:
        try:
            layer = gradcam_target_layer(model)
        except ModelError as exc:
            raise ExplainError(str(exc.message), hint="pass a layer name, e.g. --layer "
                               + (_conv_blocks(model)[-1:] or ["features"])[0]) from None
        return layer, _module_name(model, layer)
    if isinstance(target_layer, nn.Module):
        return target_layer, _module_name(model, target_layer)
    try:
        layer = model.get_submodule(str(target_layer))
    except AttributeError:
        candidates = ", ".join(_conv_blocks(model)[-6:])
        raise ExplainError(f"the model has no layer {target_layer!r}",
                           hint=f"convolutional blocks near the output: {candidates}") from None
    return layer, str(target_layer)


def _cam_class(method: str) -> Any:
    if method not in METHODS:
        raise ExplainError(f"unknown method {method!r}",
                           hint=f"use one of: {', '.join(METHODS)}")
    try:
        import pytorch_grad_cam
    except ImportError as exc:
        raise ExplainError(f"Grad-CAM needs the pytorch-grad-cam package ({exc})",
                           hint="pip install 'visiondeck[explain]'") from None
    return getattr(pytorch_grad_cam, METHODS[method])


def explain_batch(
    model: Any,
    images: Sequence[np.ndarray],
    spec: SpecLike,
    *,
    method: str = "gradcam",
    target_layer: Any = None,
    class_indices: Sequence[int | None] | None = None,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> list[Explanation]:
    """Explain several pictures in one forward/backward pass (the report's galleries).

    `class_indices[i]` None (or no list) explains the predicted class of picture i.
    """
    import torch

    from visiondeck.data.transforms import normalize

    if not len(images):
        return []
    cam_cls = _cam_class(method)
    layer, layer_name = resolve_target_layer(model, target_layer)
    pictures = [model_image(image, spec) for image in images]
    batch = np.stack([normalize(p, spec.mean, spec.std) for p in pictures])
    wanted = list(class_indices) if class_indices is not None else [None] * len(pictures)
    if len(wanted) != len(pictures):
        raise ExplainError(f"{len(wanted)} class indices for {len(pictures)} images")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    with _LOCK, torch.inference_mode(False), torch.enable_grad():
        was_training = model.training
        tensor = torch.from_numpy(batch).to(device=device, dtype=dtype).requires_grad_(True)
        try:
            model.eval()
            with torch.no_grad():
                logits = model(tensor).float().cpu().numpy()
            chosen = [int(np.argmax(row)) if c is None else int(c)
                      for row, c in zip(logits, wanted, strict=True)]
            if any(not 0 <= c < logits.shape[1] for c in chosen):
                raise ExplainError(f"class index out of range 0..{logits.shape[1] - 1}: "
                                   f"{chosen}")
            heatmaps = _run_cam(cam_cls, model, layer, tensor, chosen)
        finally:
            model.train(was_training)
    return [
        Explanation(heatmap, overlay(picture, heatmap, alpha, colormap=colormap), picture,
                    index, method, layer_name, row.astype(np.float32))
        for heatmap, picture, index, row in zip(heatmaps, pictures, chosen, logits, strict=True)
    ]


def _run_cam(cam_cls: Any, model: Any, layer: Any, tensor: Any, chosen: list[int]) -> np.ndarray:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = cam_cls(model=model, target_layers=[layer])
    try:
        # ScoreCAM/AblationCAM draw tqdm bars on stderr: keep the CLI's and the API's output clean
        with contextlib.redirect_stderr(io.StringIO()):
            maps = cam(input_tensor=tensor, targets=[ClassifierOutputTarget(c) for c in chosen])
    except (RuntimeError, ValueError, IndexError) as exc:
        raise ExplainError(f"{type(cam).__name__} failed on layer {type(layer).__name__}: {exc}",
                           hint="choose another layer (the last convolutional block usually "
                                "works) or method") from None
    finally:
        cam.activations_and_grads.release()
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32))
    return np.clip(maps, 0.0, 1.0)


def explain_image(
    model: Any,
    image: np.ndarray,
    spec: SpecLike,
    *,
    method: str = "gradcam",
    target_layer: Any = None,
    class_index: int | None = None,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> Explanation:
    """Explain one picture: a heat-map of where `model` looked for `class_index`.

    `image` is uint8 (H, W, C) (or (H, W)); ideally already resized to the model input,
    otherwise it is resized with `spec.resize`. `spec` gives channels, size, mean and std
    (a run's `PrepareSpec` or a Bundle's `InputSpec`). `method` is one of `METHODS`;
    `target_layer` None picks the architecture's default, or give a dotted module name.
    """
    return explain_batch(model, [image], spec, method=method, target_layer=target_layer,
                         class_indices=[class_index], alpha=alpha, colormap=colormap)[0]
