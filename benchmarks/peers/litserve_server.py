"""A VisionDeck Bundle served by LitServe: POST /predict, multipart `image` → JSON top-3.

Written the way LitServe's documentation writes an image classifier (`decode_request`
reads the uploaded file, `predict` runs the model, `batch`/`unbatch` stack and split
when batching is on); the model half is VisionDeck's (`peer_model.py`). LitServe runs one
HTTP process per inference worker by default and hands requests to its inference
workers over a queue.

    benchmarks/.venv-peers/bin/python benchmarks/peers/litserve_server.py BUNDLE \\
        --port 8001 [--workers 2] [--batch] [--fast-queue] [--threads 1]

--batch: LitServe's batching with `visiondeck serve`'s limits (32 images, 2 ms wait);
--fast-queue: LitServe's ZeroMQ transport instead of multiprocessing queues.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_model import ServingPredictor

#: `visiondeck serve`'s defaults (max_batch, max_wait_ms), so batching is compared like
#: for like
MAX_BATCH = 32
BATCH_TIMEOUT_S = 0.002


class BundleAPI(ls.LitAPI):
    """One Bundle; the request is LitServe's parsed multipart form."""

    def __init__(self, bundle: str, threads: int, batching: bool) -> None:
        super().__init__(max_batch_size=MAX_BATCH if batching else 1,
                         batch_timeout=BATCH_TIMEOUT_S if batching else 0.0)
        self.bundle_dir, self.threads, self.batching = bundle, threads, batching
        self.model: ServingPredictor | None = None

    def setup(self, device: str) -> None:
        self.model = ServingPredictor(self.bundle_dir, self.threads)
        self.model.warm()

    # no annotation on `request`: LitServe reads it, and none means "the parsed form or
    # JSON body" (an annotation such as Any would make it a query parameter)
    def decode_request(self, request):
        return self.model.prepare(request["image"].file.read())

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> Any:
        if self.batching:
            return self.model.answer(x)
        return self.model.answer(x[None])[0]

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1, help="LitServe workers_per_device")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--batch", action="store_true", help="LitServe batching on")
    parser.add_argument("--fast-queue", action="store_true", help="LitServe's ZeroMQ queue")
    args = parser.parse_args()
    server = ls.LitServer(BundleAPI(args.bundle, args.threads, args.batch), accelerator="cpu",
                          devices=1, workers_per_device=args.workers, timeout=60,
                          fast_queue=args.fast_queue)
    server.run(host="127.0.0.1", port=args.port, log_level="warning",
               generate_client_file=False)


if __name__ == "__main__":
    main()
