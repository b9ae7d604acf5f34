"""Grad-CAM for the served model: the only part of the service that imports torch.

The network is rebuilt from the Bundle's weights.safetensors + bundle.json the first time
`/explain` is called (never at start-up), then kept for that model version; a reload
drops it. CAM runs on a worker thread under a lock (its hooks are not re-entrant), so
predictions keep flowing while an explanation is computed.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from visiondeck.serve.errors import ServeError

__all__ = ["ExplainResult", "Explainer"]


@dataclass(frozen=True)
class ExplainResult:
    class_name: str
    class_index: int
    method: str
    target_layer: str
    probabilities: np.ndarray  # calibrated, from the torch model's logits
    overlay_png: bytes
    heatmap_png: bytes
    image_png: bytes


class Explainer:
    """Lazily loaded torch model per served version, and the CAM call."""

    def __init__(self) -> None:
        self._loaded: tuple[str, Any] | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="visiondeck-explain")

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._loaded = None

    async def explain(self, model: Any, image: np.ndarray, *, method: str,
                      class_name: str | None, alpha: float, scale: int) -> ExplainResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, lambda: self._explain(model, image, method, class_name, alpha, scale))

    def _network(self, model: Any) -> Any:
        if self._loaded is None or self._loaded[0] != model.version:
            try:
                from visiondeck.explain import load_model_from_bundle
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise ServeError(f"explanations need the explain extra ({exc})",
                                 code="explain_unavailable", status=501,
                                 hint="pip install 'visiondeck[train,explain]'") from None
            self._loaded = (model.version, load_model_from_bundle(model.bundle.path))
        return self._loaded[1]

    def _explain(self, model: Any, image: np.ndarray, method: str, class_name: str | None,
                 alpha: float, scale: int) -> ExplainResult:
        from visiondeck.explain import METHODS, ExplainError, colorize, explain_image, png_bytes

        if method not in METHODS:
            raise ServeError(f"unknown CAM method {method!r}", code="bad_method", status=422,
                             hint=f"use one of {', '.join(METHODS)}")
        classes = model.bundle.classes
        index = None
        if class_name is not None:
            if class_name not in classes:
                raise ServeError(f"unknown class {class_name!r}", code="bad_class", status=422,
                                 hint=f"the model's classes: {', '.join(classes)}")
            index = classes.index(class_name)
        with self._lock:
            network = self._network(model)
            try:
                result = explain_image(network.model, image, network.spec, method=method,
                                       class_index=index, alpha=alpha)
                calibration = model.bundle.calibration
                if model.bundle.multilabel:
                    # a sigmoid per label, as /predict answers; with no label asked for,
                    # the most probable one (a chosen label's CAM is of its own logit)
                    probabilities = calibration.label_probabilities(result.logits[None, :])[0]
                    decided = int(np.argmax(probabilities))
                else:
                    probabilities = calibration.probabilities(result.logits[None, :])[0]
                    decided = int(calibration.decide(probabilities[None, :], classes)[0])
                if index is None and decided != result.class_index:
                    # "the predicted class" is the Bundle's decision (its binary operating
                    # threshold, or the most probable label), not the bare argmax
                    result = explain_image(network.model, image, network.spec, method=method,
                                           class_index=decided, alpha=alpha)
            except ExplainError as exc:
                raise ServeError(exc.message, code="explain_failed", status=422,
                                 hint=exc.hint) from None
        return ExplainResult(
            class_name=classes[result.class_index], class_index=result.class_index,
            method=result.method, target_layer=result.target_layer_name,
            probabilities=probabilities,
            overlay_png=png_bytes(result.overlay, scale=scale),
            heatmap_png=png_bytes(colorize(result.heatmap), scale=scale),
            image_png=png_bytes(result.image, scale=scale),
        )
