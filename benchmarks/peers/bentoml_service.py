"""A VisionDeck Bundle served by BentoML: POST /predict, multipart `image` → JSON top-3.

Written the way BentoML's documentation writes an image service: with adaptive batching
(VDPEER_BATCH=1, the default) a batchable API takes a `list[Path]`, the files of
concurrent requests merged into one call, and answers a one-element list per request;
without it, one `Path` in, one answer out. The model half is VisionDeck's
(`peer_model.py`). BentoML has no command-line options for a service's settings, so they
come from the environment:

    VDPEER_BUNDLE=BUNDLE VDPEER_WORKERS=1 VDPEER_THREADS=1 VDPEER_BATCH=1 \\
        BENTOML_DO_NOT_TRACK=true benchmarks/.venv-peers/bin/bentoml serve \\
        bentoml_service:Classifier --working-dir benchmarks/peers --host 127.0.0.1 --port 8002

The batch limit is `visiondeck serve`'s (32); the latency budget is BentoML's default.
Access logs are off, as in `visiondeck serve`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import bentoml
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_model import ServingPredictor

MAX_BATCH = 32


@bentoml.service(workers=int(os.environ.get("VDPEER_WORKERS", "1")),
                 logging={"access": {"enabled": False}}, traffic={"timeout": 60})
class Classifier:
    def __init__(self) -> None:
        self.model = ServingPredictor(os.environ["VDPEER_BUNDLE"],
                                      int(os.environ.get("VDPEER_THREADS", "1")))
        self.model.warm()

    if os.environ.get("VDPEER_BATCH", "1") == "1":
        @bentoml.api(batchable=True, max_batch_size=MAX_BATCH)
        def predict(self, image: list[Path]) -> list[dict[str, Any]]:
            batch = np.stack([self.model.prepare(path.read_bytes()) for path in image])
            return self.model.answer(batch)
    else:
        @bentoml.api
        def predict(self, image: Path) -> dict[str, Any]:
            return self.model.answer(self.model.prepare(image.read_bytes())[None])[0]
