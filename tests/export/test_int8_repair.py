"""The two INT8 repairs: saturating weights get 7-bit or exact u8 ranges, biases cancel
rounding error.

Every check compares with a second computation: the pair sums done by hand in numpy, ONNX
Runtime's exact kernel (`session.x64quantprecision`), the FP32 model's own means.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.export.test_compression import _images, _same_padding_net


def _pointwise_net(path: Path, weight: float, seed: int = 0, alternate: bool = False) -> None:
    """Conv 1x1 (16 -> 8 channels) -> Relu -> global pool -> Gemm: one u8 x s8 GEMM layer
    whose weights are all close to `weight`, so adjacent products share a sign, or with
    `alternate` of alternating signs, so no pair of them can leave int16."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = (weight * (1 + 0.1 * rng.random((8, 16, 1, 1)))).astype(np.float32)
    if alternate:
        w[:, 1::2] *= -1
    fc = rng.standard_normal((4, 8)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w", "b"], ["conv"], name="conv"),
            helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
            helper.make_node("GlobalAveragePool", ["relu"], ["pool"], name="pool"),
            helper.make_node("Flatten", ["pool"], ["flat"], name="flat"),
            helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], name="fc", transB=1),
        ],
        "pointwise",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 16, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.zeros(8, np.float32), "b"),
            numpy_helper.from_array(fc, "fc"),
            numpy_helper.from_array(np.zeros(4, np.float32), "fcb"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _bright(n: int, seed: int = 0) -> np.ndarray:
    """Inputs in [0, 1]: u8 activations spread over 0..255, as a ReLU6 output's are."""
    return np.random.default_rng(seed).random((n, 16, 8, 8)).astype(np.float32)


def _session(path: Path, exact: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if exact:
        options.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _no_vnni() -> bool:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return "avx2" in flags and not {"avx512_vnni", "avx_vnni"} & flags


def test_the_simulated_pair_sums_match_a_hand_computation(tmp_path: Path) -> None:
    """The saturated share of the one conv, against the same pair sums done here by hand
    from the quantised model's own integers."""
    import onnx
    from onnx import numpy_helper

    from visiondeck.export.int8_repair import saturating_layers
    from visiondeck.export.quantize import Int8Settings, quantize_static_int8

    net, out = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    _pointwise_net(net, 1.0)
    images = _bright(32)
    plain = Int8Settings(bias_correction=False, saturation_fix=False)
    quantize_static_int8(net, out, [images], settings=plain)
    model = onnx.load(str(out))
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    x_dq, w_dq = producer[conv.input[0]], producer[conv.input[1]]
    weight = values[w_dq.input[0]].astype(np.int64).reshape(8, 16)
    scale, zero = float(values[x_dq.input[1]]), int(values[x_dq.input[2]])
    # the u8 activations, as QuantizeLinear computes them from the input
    x = np.clip(np.rint(images[:8] / scale) + zero, 0, 255).astype(np.int64)
    rows = x.transpose(0, 2, 3, 1).reshape(-1, 16)
    pairs = (rows[:, None, 0::2] * weight[None, :, 0::2]
             + rows[:, None, 1::2] * weight[None, :, 1::2])
    lost = np.abs((pairs - np.clip(pairs, -32768, 32767)).sum(-1)).sum()
    expected = lost / np.abs(pairs.sum(-1)).sum()
    assert expected > 0.01  # the net is built to saturate

    found = saturating_layers(model, images[:8], limit=0.0)
    assert found[0][0] == "conv"  # worst first
    assert found[0][1] == pytest.approx(expected, rel=1e-6)
    assert dict(saturating_layers(model, images[:8], limit=expected * 1.01)) == {}


def _weights(model) -> dict[str, np.ndarray]:
    """Each Conv/Gemm's stored (quantised) weight, by node name."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    return {n.name: values[producer[n.input[1]].input[0]] for n in model.graph.node
            if n.op_type in ("Conv", "Gemm") and n.input[1] in producer}


@pytest.mark.parametrize("repair", ["layers", "channels"])
def test_repaired_weights_cannot_saturate_and_match_the_exact_kernel(
    tmp_path: Path, repair: str
) -> None:
    """"layers": every saturating layer's weights are u8 (the exact kernel). "channels": the
    stem's are, and elsewhere only the saturating output channels get 7-bit ranges
    (|q| <= 64) while the others keep all of int8's. Either way nothing is left for the
    fast kernel to saturate, and ORT's default session answers as its exact kernel does,
    on any CPU; unrepaired, a CPU without VNNI answers differently."""
    import onnx

    from visiondeck.export.int8_repair import (
        CHANNEL_LIMIT,
        channel_saturation,
        saturating_layers,
    )
    from visiondeck.export.quantize import Int8Settings, quantize_static_int8

    net = tmp_path / "fp32.onnx"
    _pointwise_net(net, 1.0)
    images = _bright(32)
    fixed, plain = tmp_path / "fixed.onnx", tmp_path / "plain.onnx"
    settings = Int8Settings(bias_correction=False, saturation_repair=repair)
    done = quantize_static_int8(net, fixed, [images], settings=settings)
    assert list(done.settings["saturating_layers"]) == ["conv", "fc"]  # worst first
    model = onnx.load(str(fixed))
    weights = _weights(model)
    assert weights["conv"].dtype == np.uint8  # the stem, in both repairs
    if repair == "layers":
        assert done.settings["exact_layers"] == ["conv", "fc"]
        assert weights["fc"].dtype == np.uint8
        assert "2 saturating layer(s) given exact u8 weights" in done.detail
    else:
        assert done.settings["exact_layers"] == ["conv"]
        quantize_static_int8(net, plain, [images], settings=Int8Settings(
            bias_correction=False, saturation_fix=False))
        lost, total = channel_saturation(onnx.load(str(plain)), images[::4])["fc"]
        flagged = lost / np.maximum(total, 1.0) > CHANNEL_LIMIT
        assert 0 < flagged.sum() < len(flagged)  # some channels of fc saturate, not all
        assert done.settings["seven_bit_channels"] == {"fc": int(flagged.sum())}
        fc = np.abs(weights["fc"].astype(np.int64))  # (4 classes, 8 inputs), transB
        assert weights["fc"].dtype == np.int8
        assert (fc[flagged].max(1) <= 64).all() and (fc[flagged].max(1) >= 62).all()
        assert (fc[~flagged].max(1) == 127).all()  # full range where nothing saturates
    assert saturating_layers(model, images[::4], limit=0.0) == []

    fast = _session(fixed).run(["logits"], {"input": images})[0]
    exact = _session(fixed, exact=True).run(["logits"], {"input": images})[0]
    np.testing.assert_allclose(fast, exact, rtol=1e-5, atol=1e-5)

    quantize_static_int8(
        net, plain, [images], settings=Int8Settings(bias_correction=False, saturation_fix=False)
    )
    fast = _session(plain).run(["logits"], {"input": images})[0]
    exact = _session(plain, exact=True).run(["logits"], {"input": images})[0]
    if _no_vnni():  # the defect the fix is for, where this CPU has it
        assert np.abs(fast - exact).max() > 0.01 * np.abs(exact).max()
    else:
        np.testing.assert_allclose(fast, exact, rtol=1e-5, atol=1e-5)


def test_layers_that_cannot_saturate_are_left_alone(tmp_path: Path) -> None:
    import onnx

    from visiondeck.export.int8_repair import saturating_layers
    from visiondeck.export.quantize import Int8Settings, quantize_static_int8

    net, out = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    _pointwise_net(net, 1.0, alternate=True)  # |a·127 - b·127| <= 255·127 < 32768
    images = _bright(16)
    done = quantize_static_int8(net, out, [images], settings=Int8Settings())
    assert "conv" not in done.settings["saturating_layers"]
    assert "conv" not in dict(saturating_layers(onnx.load(str(out)), images, limit=0.0))


def test_corrected_biases_cancel_the_weight_error_of_the_first_layer(tmp_path: Path) -> None:
    """With the quantised weights and corrected biases, the first conv's per-channel output
    mean is FP32's again (exactly: no padding, linear in its input)."""
    import onnx
    from onnx import numpy_helper

    from visiondeck.export.int8_repair import corrected_biases, dequantised_weights, input_means
    from visiondeck.export.quantize import Int8Settings, quantize_static_int8

    net, out = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    _pointwise_net(net, 0.3, seed=3)
    rng = np.random.default_rng(1)
    # inputs with a large mean: the rounding error's bias ΔW · E[x] is large
    images = (0.8 + 0.2 * rng.random((32, 16, 8, 8))).astype(np.float32)
    plain = Int8Settings(bias_correction=False, saturation_fix=False)
    quantize_static_int8(net, out, [images], settings=plain)
    fp32, int8 = onnx.load(str(net)), onnx.load(str(out))
    weights = dequantised_weights(int8)
    assert set(weights) == {"conv", "fc"}
    means = input_means(fp32, images)
    fixed = corrected_biases(fp32, int8, means)

    def conv_mean(model: onnx.ModelProto, weight: np.ndarray | None) -> np.ndarray:
        values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        w = (values["w"] if weight is None else weight).reshape(8, 16)
        return np.einsum("nchw,oc->o", images, w) / (32 * 64) + values["b"]

    reference = conv_mean(fp32, None)
    rounded = conv_mean(fp32, weights["conv"])
    corrected = conv_mean(fixed, weights["conv"])
    assert np.abs(rounded - reference).max() > 1e-4
    np.testing.assert_allclose(corrected, reference, atol=1e-5)
    # the input means are what the model computes: the images' own channel means
    np.testing.assert_allclose(means["conv"], images.mean((0, 2, 3)), rtol=1e-5)


def test_bias_correction_brings_the_rounded_weights_output_back_to_fp32(tmp_path: Path) -> None:
    """Through a whole same-padded network (ReLUs, a depthwise conv, the head), with its int8
    weights and float activations: the mean error of each logit shrinks."""
    import onnx

    from visiondeck.export.int8_repair import (
        corrected_biases,
        dequantised_weights,
        input_means,
        with_quantised_weights,
    )
    from visiondeck.export.quantize import Int8Settings, quantize_static_int8

    net, out = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    _same_padding_net(net, seed=4)
    images = _images(48, seed=5) + 1.5  # a shifted input mean, as images often have
    plain = Int8Settings(bias_correction=False, saturation_fix=False)
    quantize_static_int8(net, out, [images[:24], images[24:]], settings=plain)
    fp32, int8 = onnx.load(str(net)), onnx.load(str(out))
    weights = dequantised_weights(int8)
    assert weights and set(weights) <= {n.name for n in fp32.graph.node}

    def logits(model: onnx.ModelProto) -> np.ndarray:
        path = tmp_path / "rounded.onnx"
        onnx.save(with_quantised_weights(model, int8), str(path))
        return _session(path).run(["logits"], {"input": images})[0]

    y32 = _session(net).run(["logits"], {"input": images})[0]
    fixed = corrected_biases(fp32, int8, input_means(fp32, images))
    before = np.abs((logits(fp32) - y32).mean(0)).mean()
    after = np.abs((logits(fixed) - y32).mean(0)).mean()
    assert after < 0.3 * before, (before, after)


def test_settings_names_say_which_repair_is_off() -> None:
    from visiondeck.export.quantize import CANDIDATES, Int8Settings

    assert Int8Settings().name == "minmax-u8"
    assert Int8Settings(bias_correction=False).name == "minmax-u8-no-bias-correction"
    assert Int8Settings(saturation_fix=False).name == "minmax-u8-no-saturation-fix"
    assert Int8Settings(saturation_repair="layers").name == "minmax-u8-exact-layers"
    with pytest.raises(ValueError, match="saturation_repair"):
        Int8Settings(saturation_repair="7bit")
    assert all(c.bias_correction and c.saturation_fix for c in CANDIDATES)
    assert Int8Settings().to_dict()["bias_correction"] is True


def test_a_model_without_conv_or_gemm_is_quantised_without_repairs(tmp_path: Path) -> None:
    """A MatMul-only classifier: nothing to simulate or correct, and no error."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from visiondeck.export.int8_repair import input_means
    from visiondeck.export.quantize import quantize_static_int8

    weight = np.random.default_rng(0).standard_normal((12, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], name="flat"),
            helper.make_node("MatMul", ["flat", "w"], ["logits"], name="matmul"),
        ],
        "matmul",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    net, out = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(model, str(net))
    images = np.random.default_rng(1).random((8, 3, 2, 2)).astype(np.float32)
    assert input_means(model, images) == {}
    done = quantize_static_int8(net, out, [images])
    assert done.settings["saturating_layers"] == {}
    y32 = _session(net).run(["logits"], {"input": images})[0]
    y8 = _session(out).run(["logits"], {"input": images})[0]
    assert np.abs(y8 - y32).max() < 0.05 * np.abs(y32).max()


def test_exact_kernel_is_needed_only_for_unrepaired_static_int8_on_a_saturating_cpu() -> None:
    from visiondeck.export.int8_repair import exact_kernel_needed, saturating_cpu

    older = {"method": "static", "settings": {"name": "minmax-u8"}}  # before the repair
    assert exact_kernel_needed(older) == saturating_cpu()
    assert exact_kernel_needed({"method": "static", "settings": {"saturation_fix": False}}) == (
        saturating_cpu()
    )
    assert not exact_kernel_needed({"method": "static", "settings": {"saturation_fix": True}})
    assert not exact_kernel_needed({"method": "dynamic", "settings": {"name": "dynamic"}})
    assert not exact_kernel_needed({"file": "model.onnx"})  # FP32
    assert not exact_kernel_needed(None)
    assert saturating_cpu() == _no_vnni() or not Path("/proc/cpuinfo").is_file()


def test_an_older_int8_bundle_is_served_with_the_exact_kernel_where_it_would_saturate(
    bundle_copy,
) -> None:
    """The Predictor and the server's engine open an INT8 model exported before the repair
    with ORT's exact kernel on a CPU without VNNI, and a repaired one with the fast kernel."""
    import json

    from visiondeck.export.int8_repair import EXACT_KERNEL_OPTION, saturating_cpu
    from visiondeck.export.predictor import Predictor
    from visiondeck.serve.inference.engine import load_model

    repaired = bundle_copy()
    manifest = json.loads((repaired / "bundle.json").read_text())
    assert manifest["variants"]["int8"]["settings"]["saturation_fix"] is True
    int8 = dict(manifest["variants"]["int8"])
    int8["settings"] = {k: v for k, v in int8["settings"].items() if k != "saturation_fix"}
    older = bundle_copy(variants={**manifest["variants"], "int8": int8})

    def option(session) -> str:
        try:
            return session.get_session_options().get_session_config_entry(EXACT_KERNEL_OPTION)
        except RuntimeError:  # ORT's answer for an entry never set
            return ""

    for folder, exact in ((repaired, False), (older, saturating_cpu())):
        expected = "1" if exact else ""
        assert option(Predictor(folder, variant="int8").session) == expected
        assert option(load_model(str(folder), variant="int8").session) == expected
        assert option(Predictor(folder, variant="fp32").session) == ""
