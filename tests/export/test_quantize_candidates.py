"""INT8 candidates chosen by measurement: the k layers that lose most kept float.

A tiny same-padded network (the graph shape of Lite0's blocks) and random images; every
check compares with a second computation (hand-made losses, the first pass's own SNRs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.export.test_compression import _images, _same_padding_net


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("worst") / "fp32.onnx"
    _same_padding_net(path)
    return path


def test_worst_layers_follow_the_measured_snr_not_the_family(net: Path) -> None:
    import onnx

    from visiondeck.export.quantize import worst_layers

    graph = onnx.load(str(net)).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    relu_after_b = next(
        n for n in graph.node if n.op_type == "Relu" and convs[1].output[0] in n.input
    )
    losses = [
        (convs[0].output[0], 30.0),
        (relu_after_b.output[0], 12.0),  # an activation's SNR counts for its conv
        (gemm.output[0], 20.0),
        ("/some/Pad_output_0", 5.0),  # not a weighted layer: never chosen
    ]
    assert worst_layers(onnx.load(str(net)), losses, 1) == [convs[1].name]
    assert worst_layers(onnx.load(str(net)), losses, 2) == [convs[1].name, gemm.name]
    assert worst_layers(onnx.load(str(net)), losses, 5) == [convs[1].name, gemm.name, convs[0].name]


def test_float_worst_keeps_the_lowest_snr_layer_float(net: Path, tmp_path: Path) -> None:
    import onnx

    from visiondeck.export.checks import ort_session
    from visiondeck.export.quantize import (
        LOSS_IMAGES,
        Int8Settings,
        layer_losses,
        quantize_static_int8,
    )

    images = _images(32)
    calibration = [images[:16], images[16:]]
    plain = tmp_path / "plain.onnx"
    quantize_static_int8(net, plain, calibration)
    # the first pass measures on every 4th calibration image: the same 8 here
    losses = dict(layer_losses(net, plain, images[:: 32 // LOSS_IMAGES]))
    graph = onnx.load(str(net)).graph
    weighted = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]

    def snr(node) -> float:  # its own output, or its ReLU's when only that one is compared
        after = [m for m in graph.node if node.output[0] in m.input and m.op_type == "Relu"]
        names = [node.output[0], *(m.output[0] for m in after)]
        return min((losses[t] for t in names if t in losses), default=float("inf"))

    expected = min(weighted, key=snr).name

    out = tmp_path / "worst1.onnx"
    settings = Int8Settings(float_worst=1)
    done = quantize_static_int8(net, out, calibration, settings=settings)
    assert settings.name == "minmax-u8-float-worst1"
    assert done.settings["float_worst"] == 1
    assert done.settings["worst_layers"] == [expected]
    int8 = onnx.load(str(out)).graph
    initializers = {t.name for t in int8.initializer}
    float_weight = [
        n.name for n in int8.node if n.op_type in ("Conv", "Gemm") and n.input[1] in initializers
    ]  # no DequantizeLinear in front
    assert float_weight == [expected]
    y32 = ort_session(net).run(["logits"], {"input": images})[0]
    y8 = ort_session(out).run(["logits"], {"input": images})[0]
    assert np.abs(y8 - y32).max() < 0.02 * np.abs(y32).max()


def test_float_worst_must_not_be_negative() -> None:
    from visiondeck.export.quantize import Int8Settings

    with pytest.raises(ValueError, match="float_worst"):
        Int8Settings(float_worst=-1)
