"""TensorFlow-style "same" padding is fixed for the Bundle's size before ONNX export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.export.test_compression import _same_padding_module


@pytest.mark.parametrize("size", [32, 33])  # even and odd: other, asymmetric pads
def test_frozen_padding_computes_what_timm_computes_and_leaves_the_model_alone(size: int) -> None:
    import torch

    from visiondeck.export.static_padding import freeze_same_padding

    model = _same_padding_module(0)
    keys = list(model.state_dict())
    x = torch.randn(3, 3, size, size)
    frozen, count = freeze_same_padding(model, x)
    assert count == 2 and frozen is not model
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), model(x), rtol=0, atol=0)
        # the original still pads for whatever size it is given
        other = torch.randn(1, 3, size + 7, size + 7)
        assert model(other).shape == (1, 4)
    assert list(model.state_dict()) == keys == list(frozen.state_dict())
    assert "forward" not in vars(model.a)  # only the copy's layers were changed


def test_a_model_without_same_padding_is_returned_as_it_is() -> None:
    import torch
    from torch import nn

    from visiondeck.export.static_padding import freeze_same_padding

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten())
    assert freeze_same_padding(model, torch.zeros(1, 3, 8, 8)) == (model, 0)


def test_the_exported_graph_has_no_shape_arithmetic_and_ort_fuses_every_pad(
    tmp_path: Path,
) -> None:
    """Through export's own path (`_to_onnx`): no Shape node is left, ONNX Runtime's
    optimised graph has no Pad (PadFusion merged each into its conv), and the answers are
    PyTorch's."""
    import onnx
    import onnxruntime as ort
    import torch

    from visiondeck.export.bundle import InputSpec
    from visiondeck.export.onnx_export import _to_onnx

    model = _same_padding_module(1)
    spec = InputSpec(33, 3, "center_crop", (0.5,) * 3, (0.5,) * 3)
    path = tmp_path / "model.onnx"
    _to_onnx(model, spec, path, "torchscript", [])
    graph = onnx.load(str(path)).graph
    assert not [n for n in graph.node if n.op_type == "Shape"]
    assert [n.op_type for n in graph.node].count("Pad") == 2

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimised = onnx.load(str(tmp_path / "optimised.onnx")).graph
    assert "Pad" not in {n.op_type for n in optimised.node}

    x = np.random.default_rng(2).standard_normal((5, 3, 33, 33)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(["logits"], {"input": x})[0], expected,
                               rtol=1e-5, atol=1e-5)
