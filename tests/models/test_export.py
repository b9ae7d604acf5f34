"""Our networks (CBAM included) must export: ONNX opset 17 with a dynamic batch axis.

The exported graph is run by ONNX Runtime at batch sizes other than the one it was traced
with, and must give PyTorch's logits; `torch.jit.trace` and `torch.export` (the dynamo
exporter's front end) must handle the models with a variable batch size too.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.export import Dim

from visiondeck.models import create_model

CASES = [("simple_cnn", "none", 28), ("simple_cnn", "none", 32), ("resnet_small", "none", 28),
         ("resnet_small", "cbam", 28), ("simple_cnn", "cbam", 32)]


def _onnx_export(model: torch.nn.Module, x: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    return buffer.getvalue()


@pytest.mark.parametrize(("name", "attention", "size"), CASES)
def test_onnx_model_gives_pytorchs_logits_at_any_batch(name: str, attention: str,
                                                      size: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, 10, in_chans=1, attention=attention).eval()
    _randomize_batchnorm(model)
    session = ort.InferenceSession(_onnx_export(model, torch.randn(2, 1, size, size)),
                                   providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    for n in (1, 5):
        x = torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(n))
        logits = session.run(["logits"], {"image": x.numpy()})[0]
        with torch.no_grad():
            expected = model(x).numpy()
        assert logits.shape == (n, 10)
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
        assert np.ptp(expected) > 1e-3  # logits that differ, so a wrong graph cannot match


def _randomize_batchnorm(model: torch.nn.Module) -> None:
    """Running statistics away from (0, 1), so an export that drops them is caught."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            shape = module.running_mean.shape
            module.running_mean.copy_(torch.randn(shape, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)


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
