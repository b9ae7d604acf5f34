"""The model half of the peer servers: VisionDeck's Bundle, decoder and ONNX Runtime settings.

LitServe and BentoML are compared with `visiondeck serve` on the serving stack alone, so
everything below the HTTP layer is VisionDeck's own code: `Bundle.prepare` turns the
uploaded bytes into the tensor (`imaging.decode_image` with the Bundle's limits, then the
Bundle's resize and normalisation, as `serve/inference/preprocess.py` does), the Bundle's
calibration turns logits into the top-3 answer (`Predictor`), and the ONNX Runtime session
is opened with the options `serve/inference/engine.py` uses. Only the core install of
VisionDeck is needed (no `serve` extra), which is what the peers' virtualenv has.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from visiondeck.export.predictor import Predictor

__all__ = ["TOP_K", "ServingPredictor"]

#: classes in each answer: `visiondeck serve`'s default top_k
TOP_K = 3


class ServingPredictor(Predictor):
    """A `Predictor` whose session is opened as the serving engine opens its own.

    The options mirror `_open_session` in `visiondeck/serve/inference/engine.py`, which
    the peers cannot import (it needs the `serve` extra): the given intra-op threads (the
    benchmark passes the count VisionDeck's engine chooses for the model and the worker
    count), one inter-op thread, sequential execution, every graph optimisation, and no
    spinning between runs (ONNX Runtime's default spins).
    """

    def __init__(self, bundle_dir: str, threads: int) -> None:
        super().__init__(bundle_dir, threads=threads, top_k=TOP_K)

    @property
    def session(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.log_severity_level = 3
            self._session = ort.InferenceSession(str(self.model_path), options,
                                                 providers=["CPUExecutionProvider"])
        return self._session

    def prepare(self, data: bytes) -> np.ndarray:
        """Uploaded bytes → float32 (C, H, W), through VisionDeck's one decoder."""
        return self.bundle.prepare(data)

    def answer(self, batch: np.ndarray) -> list[dict[str, Any]]:
        """One JSON-ready answer (label, probability, top-3) per row of a prepared batch."""
        return [p.to_dict() for p in self.predict_prepared(batch)]

    def warm(self) -> None:
        """First runs allocate: run batches of 1 and 8 before serving, as the engine does."""
        for size in (1, 8):
            self.logits(np.zeros((size, *self.bundle.input.shape), dtype=np.float32))
