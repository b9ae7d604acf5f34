"""Our networks (CBAM included) must export: ONNX opset 17 with a dynamic batch axis.

The `onnx` package is not part of the training install. Without it,
`torch.onnx.export(dynamo=False)` still runs the whole TorchScript-to-ONNX conversion (where
unsupported operators fail) and only then stops, when it needs `onnx` to write the file. So
the test accepts exactly that last error when `onnx` is missing, and also checks that
`torch.jit.trace` and `torch.export` (the dynamo exporter's front end) handle the models
with a variable batch size.
"""

from __future__ import annotations

import importlib.util
import io
import warnings

import pytest
import torch
from torch.export import Dim

from visiondeck.models import create_model

CASES = [("simple_cnn", "none", 28), ("simple_cnn", "none", 32), ("resnet_small", "none", 28),
         ("resnet_small", "cbam", 28), ("simple_cnn", "cbam", 32)]
HAVE_ONNX = importlib.util.find_spec("onnx") is not None


def _onnx_export(model: torch.nn.Module, x: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    return buffer.getvalue()


@pytest.mark.parametrize(("name", "attention", "size"), CASES)
def test_onnx_conversion_succeeds(name: str, attention: str, size: int) -> None:
    model = create_model(name, 10, in_chans=1, attention=attention).eval()
    x = torch.randn(2, 1, size, size)
    if HAVE_ONNX:
        assert len(_onnx_export(model, x)) > 10_000
        return
    with pytest.raises(torch.onnx.OnnxExporterError, match="onnx is not installed"):
        _onnx_export(model, x)


def test_plain_adaptive_pooling_would_not_convert_at_28px() -> None:
    """Guards the reason simple_cnn uses its own pool: the check above can tell failures."""
    model = create_model("simple_cnn", 10, in_chans=1).eval()
    model.pool = torch.nn.AdaptiveAvgPool2d(4)
    with pytest.raises(Exception, match="not factor of input size"):
        _onnx_export(model, torch.randn(2, 1, 28, 28))


@pytest.mark.parametrize(("name", "attention", "size"), CASES)
def test_trace_and_export_with_a_dynamic_batch(name: str, attention: str, size: int) -> None:
    model = create_model(name, 10, in_chans=1, attention=attention).eval()
    x = torch.randn(2, 1, size, size)
    bigger = torch.randn(5, 1, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # jit.trace is deprecated, still used
        warnings.simplefilter("error", torch.jit.TracerWarning)  # no shape baked in silently
        traced = torch.jit.trace(model, x)
        assert torch.allclose(traced(bigger), model(bigger), atol=1e-5)
    program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: Dim("batch", max=4096)}})
    with torch.no_grad():
        assert torch.allclose(program.module()(bigger), model(bigger), atol=1e-5)
