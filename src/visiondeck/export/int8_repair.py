"""Two repairs after ONNX Runtime's static quantiser: saturating layers and weight-rounding bias.

**Saturation.** On x86 CPUs without VNNI (AVX2, AVX-512 before Cascade Lake), ONNX
Runtime's u8 × s8 integer GEMM multiplies adjacent pairs of the reduction with
`vpmaddubsw`, whose 16-bit sum saturates: 255 × 127 × 2 does not fit in int16. The
quantised model's simulation (`ORT_DISABLE_ALL`) never saturates, so a model can look fine
where it was measured and lose 15 points of top-1 agreement on the server: on
EfficientNet-Lite0, 95.3 % agreement with FP32 simulated against 80.8 % in the optimised
session of an AVX2 machine (322 held-out photos, `benchmarks/bench_int8.py`).
`channel_saturation` simulates those pair sums in numpy on real calibration activations, on
any CPU, for each output channel of every integer convolution and GEMM, and
`repair_overrides` repairs what they change: by default ("channels") each saturating output
channel gets a 7-bit range, which cannot overflow and keeps the fast kernel, and the stem
asymmetric u8 weights, which ONNX Runtime runs with its exact (u8 × u8) kernel; or
("layers") every saturating layer gets u8 weights. The alternative,
`session.x64quantprecision`, makes every layer exact and left INT8 at 1.06-1.11× FP32 on that
machine (CPU time, `benchmarks/bench_int8_repair.py`); 7-bit weights everywhere
(`reduce_range`) avoid the overflow but cost more accuracy than they save (84 % agreement).

**Bias correction.** Rounding each weight to int8 shifts each output channel's mean by
ΔW · E[x], and the shifts add up through the network. `corrected_biases` measures E[x], the
per-channel mean of every weighted layer's input in the FP32 model on the calibration images,
and subtracts ΔW · E[x] from the layer's bias, ΔW taken from the quantised model's own
weights (Nagel et al., "Data-Free Quantization", 2019, empirical variant). On Lite0's int8
weights with float activations it took agreement from 95.7 % to 98.4 %.
"""

from __future__ import annotations

import functools
import platform
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CHANNEL_LIMIT",
    "EXACT_KERNEL_OPTION",
    "SATURATION_LIMIT",
    "SATURATION_REPAIRS",
    "VNNI_FLAGS",
    "channel_saturation",
    "corrected_biases",
    "cpu_flags",
    "dequantised_weights",
    "exact_kernel_needed",
    "exact_weight_overrides",
    "input_means",
    "repair_overrides",
    "saturating_cpu",
    "saturating_layers",
    "seven_bit_overrides",
    "with_quantised_weights",
]

# A layer whose simulated saturation changes its outputs by more than this share of their
# magnitude gets exact u8 weights. Measured on Lite0 (AVX2, 322 held-out photos,
# benchmarks/bench_int8_repair.py): 1e-3 gave 5 exact layers and embedding cosine 0.9954,
# 3e-4 10 layers and 0.9969 (ORT's all-exact kernel: 0.9972), 1e-4 16 layers and 0.9973 for
# more of the slower kernel (1.32x, 1.18-1.23x, 1.17x FP32 by CPU time).
SATURATION_LIMIT = 3e-4
# The "channels" repair's limit, per output channel: a flagged channel costs one bit of its
# weights' precision but keeps the fast kernel, so it can afford more of them. On Lite0's
# selection crops (same benchmark) 1e-4 agreed 84.4 % with FP32 against 76.6-79.7 % for
# 1e-3, 3e-4 and 3e-5, and 98.1 % of the held-out photos (97.5 % at 3e-4).
CHANNEL_LIMIT = 1e-4
# Output rows (pixels × images) sampled per layer: enough for a share of 1e-3.
SATURATION_ROWS = 4096
_INT16 = (-32768, 32767)


def _initializers(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _attribute(node: Any, name: str, default: Any) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return list(attribute.ints) if attribute.ints else attribute.i
    return default


def dequantised_weights(model: Any) -> dict[str, np.ndarray]:
    """Each quantised Conv/Gemm node's weight as the quantised model computes with it,
    by node name."""
    values = _initializers(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    out = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2:
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in values:
            continue
        q = values[dq.input[0]].astype(np.float64)
        scale = values[dq.input[1]].astype(np.float64)
        zero = values[dq.input[2]].astype(np.float64) if len(dq.input) > 2 else np.zeros(())
        shape = [1] * q.ndim
        if scale.ndim:
            shape[_attribute(dq, "axis", 1)] = -1
        out[node.name] = (q - zero.reshape(shape)) * scale.reshape(shape)
    return out


def with_quantised_weights(fp32: Any, quantised: Any) -> Any:
    """A copy of `fp32` computing with `quantised`'s int8 weights (`dequantised_weights`)
    and float activations: what the weights' rounding alone costs."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(fp32.SerializeToString())
    weights = dequantised_weights(quantised)
    tensors = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.name in weights:
            tensor = tensors[node.input[1]]
            value = weights[node.name].astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
    return model


def _session(model: Any, outputs: Sequence[str], optimise: bool) -> Any:
    """A session on `model` with `outputs` added as graph outputs (kept in memory)."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    present = {o.name for o in model.graph.output}
    for name in outputs:
        if name not in present:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with tempfile.TemporaryDirectory(prefix="vd-repair-") as tmp:
        path = Path(tmp, "model.onnx")
        onnx.save(model, str(path))
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def input_means(model: Any, images: np.ndarray, *, batch_size: int = 16,
                input_name: str = "input") -> dict[str, np.ndarray]:
    """Per-channel mean of every Conv/Gemm input over `images`, by node name (FP32 model)."""
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    if not weighted:  # (ORT answers every output when asked for none)
        return {}
    tensors = list(dict.fromkeys(n.input[0] for n in weighted))
    session = _session(model, tensors, optimise=True)
    sums: dict[str, np.ndarray] = {}
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start : start + batch_size], np.float32)
        for name, array in zip(tensors, session.run(tensors, {input_name: batch}), strict=True):
            axes = (0, 2, 3) if array.ndim == 4 else (0,)
            sums[name] = sums.get(name, 0) + array.astype(np.float64).mean(axis=axes) * len(batch)
    return {n.name: sums[n.input[0]] / max(len(images), 1) for n in weighted}


def corrected_biases(fp32: Any, quantised: Any, means: dict[str, np.ndarray]) -> Any:
    """A copy of the FP32 model whose biases cancel the quantised weights' mean error.

    Only layers whose weights the quantised model dequantises change; one without a bias
    gets one. Quantising the result again gives the same integer weights: they are untouched.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(fp32.SerializeToString())
    weights = dequantised_weights(quantised)
    tensors = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.name not in weights or node.name not in means or node.input[1] not in tensors:
            continue
        w = numpy_helper.to_array(tensors[node.input[1]]).astype(np.float64)
        error = weights[node.name] - w
        if error.shape != w.shape:
            continue
        mean = means[node.name]
        if node.op_type == "Conv":
            groups = _attribute(node, "group", 1)
            out_channels, in_per_group = error.shape[:2]
            group_of = np.arange(out_channels) // (out_channels // groups)
            channel = group_of[:, None] * in_per_group + np.arange(in_per_group)[None, :]
            shift = (error.reshape(out_channels, in_per_group, -1).sum(-1) * mean[channel]).sum(1)
        else:  # Gemm: y = x · Wᵀ (transB) or x · W
            shift = (error if _attribute(node, "transB", 0) else error.T) @ mean
        if len(node.input) < 3 or not node.input[2]:
            name = f"{node.name}/bias_correction"
            zeros = numpy_helper.from_array(np.zeros(len(shift), np.float32), name)
            model.graph.initializer.append(zeros)
            tensors[name] = model.graph.initializer[-1]
            del node.input[2:]
            node.input.append(name)
        if node.input[2] not in tensors:  # a bias computed in the graph: left as it is
            continue
        bias = tensors[node.input[2]]
        value = numpy_helper.to_array(bias).astype(np.float64) - shift
        bias.CopyFrom(numpy_helper.from_array(value.astype(np.float32), bias.name))
    return model


def _gemm_inputs(model: Any) -> list[tuple[Any, str, int, np.ndarray]]:
    """(node, quantised input tensor, its zero point, int8 weight) of every Conv (group 1)
    and Gemm that the fast u8 × s8 kernel may run."""
    values = _initializers(model)
    producer = {out: node for node in model.graph.node for out in node.output}
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or _attribute(node, "group", 1) != 1:
            continue
        x, w = producer.get(node.input[0]), producer.get(node.input[1])
        if x is None or w is None or "DequantizeLinear" not in (x.op_type, w.op_type):
            continue
        if x.op_type != w.op_type or w.input[0] not in values:
            continue
        weight = values[w.input[0]]
        if weight.dtype != np.int8:  # u8 weights already run the exact kernel
            continue
        zero = values.get(x.input[2], np.zeros(())) if len(x.input) > 2 else np.zeros(())
        found.append((node, x.input[0], int(np.ravel(zero)[0]), weight))
    return found


def _reduction_rows(node: Any, x: np.ndarray, weight: np.ndarray, zero_point: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sampled im2col rows of `x` (K in kernel-row, kernel-column, channel order, the NHWC
    layout ONNX Runtime's integer convolutions use) and the weights as (out, K)."""
    if node.op_type == "Gemm":
        rows = x.reshape(len(x), -1)
        w = weight if _attribute(node, "transB", 0) else weight.T
        return rows[rng.choice(len(rows), min(len(rows), SATURATION_ROWS), replace=False)], w
    kh, kw = weight.shape[2:]
    sh, sw = _attribute(node, "strides", [1, 1])
    dh, dw = _attribute(node, "dilations", [1, 1])
    top, left, bottom, right = _attribute(node, "pads", [0, 0, 0, 0])
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=zero_point)
    n, _, h, w_ = x.shape
    out_h, out_w = (h - dh * (kh - 1) - 1) // sh + 1, (w_ - dw * (kw - 1) - 1) // sw + 1
    picks = rng.choice(n * out_h * out_w, min(n * out_h * out_w, SATURATION_ROWS), replace=False)
    image, rest = np.divmod(picks, out_h * out_w)
    oy, ox = np.divmod(rest, out_w)
    ky, kx = np.meshgrid(np.arange(kh) * dh, np.arange(kw) * dw, indexing="ij")
    ys = oy[:, None] * sh + ky.ravel()[None, :]  # (rows, kh*kw)
    xs = ox[:, None] * sw + kx.ravel()[None, :]
    rows = x[image[:, None], :, ys, xs]  # (rows, kh*kw, c)
    return rows.reshape(len(picks), -1), weight.transpose(0, 2, 3, 1).reshape(len(weight), -1)


def channel_saturation(model: Any, images: np.ndarray, *,
                       input_name: str = "input") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per u8 × s8 layer (by node name): for each output channel, Σ|clipped part| and
    Σ|exact output| over sampled outputs of `images`.

    Simulates `vpmaddubsw` pair sums on the quantised model's own u8 activations.
    """
    layers = _gemm_inputs(model)
    if not layers:
        return {}
    tensors = list(dict.fromkeys(name for _, name, _, _ in layers))
    session = _session(model, tensors, optimise=False)
    captured = dict(zip(tensors, session.run(tensors, {input_name: images}), strict=True))
    rng = np.random.default_rng(0)
    out = {}
    for node, tensor, zero, weight in layers:
        if captured[tensor].dtype != np.uint8:  # s8 activations: another kernel
            continue
        x = captured[tensor].astype(np.int32)
        rows, w = _reduction_rows(node, x, weight.astype(np.int32), zero, rng)
        if rows.shape[1] % 2:
            rows, w = np.pad(rows, ((0, 0), (0, 1))), np.pad(w, ((0, 0), (0, 1)))
        lost, exact = np.zeros(len(w)), np.zeros(len(w))
        for start in range(0, len(w), 64):  # bounded memory: rows × 64 × K/2 at a time
            part = w[start : start + 64]
            pairs = (rows[:, None, 0::2] * part[None, :, 0::2]
                     + rows[:, None, 1::2] * part[None, :, 1::2])
            lost[start : start + 64] = np.abs((pairs - np.clip(pairs, *_INT16)).sum(-1)).sum(0)
            exact[start : start + 64] = np.abs(pairs.sum(-1)).sum(0)
        out[node.name] = (lost, exact)
    return out


def saturating_layers(model: Any, images: np.ndarray, *, limit: float | None = None,
                      input_name: str = "input") -> list[tuple[str, float]]:
    """(node name, share of output magnitude lost) of each u8 × s8 layer that saturates
    (`channel_saturation` over all its channels); only layers above `limit`, worst first."""
    limit = SATURATION_LIMIT if limit is None else limit
    return _above(channel_saturation(model, images, input_name=input_name), limit)


def _above(channels: Mapping[str, tuple[np.ndarray, np.ndarray]],
           limit: float) -> list[tuple[str, float]]:
    """(layer, share lost) of the `channel_saturation` layers whose summed share exceeds
    `limit`, worst first."""
    shares = ((name, float(lost.sum()) / max(float(exact.sum()), 1.0))
              for name, (lost, exact) in channels.items())
    return sorted(((n, s) for n, s in shares if s > limit), key=lambda kv: -kv[1])


# How `repair_overrides` keeps the fast kernel from saturating (`Int8Settings.saturation_repair`).
#   "channels": the stem gets exact u8 weights; elsewhere each output channel that saturates
#     gets a 7-bit range (|q| <= 64, so no pair sum leaves int16) and keeps the fast kernel.
#   "layers": every saturating layer gets exact u8 weights (ORT's slower u8 x u8 kernel).
# On Lite0 with the head float (AVX2, 322 held-out photos, bench_int8_repair.py): "channels"
# agreed 98.1 % with FP32 at 1.43x its speed by CPU time, "layers" 97.5 % at 1.38x; 7-bit
# channels in the stem too cost 1.5 points (96.6 %), its 27-long reduction has no slack.
SATURATION_REPAIRS = ("channels", "layers")
_SEVEN_BIT = 2.0  # a saturating channel's range is widened this much: 127 / 2 < 64


def _weight_axis(node: Any) -> int:
    """The output-channel axis of a Conv's or Gemm's weight."""
    return 0 if node.op_type == "Conv" or _attribute(node, "transB", 0) else 1


def exact_weight_overrides(model: Any, nodes: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """ORT `TensorQuantOverrides` giving the weights of `nodes` asymmetric u8 ranges (one
    zero point per channel), which ORT runs with its non-saturating kernel."""
    from onnxruntime.quantization import QuantType

    wanted = set(nodes)
    return {
        node.input[1]: [{"axis": _weight_axis(node), "quant_type": QuantType.QUInt8,
                         "symmetric": False}]
        for node in model.graph.node if node.name in wanted and len(node.input) > 1
    }


def seven_bit_overrides(model: Any,
                        bad: Mapping[str, np.ndarray]) -> dict[str, list[dict[str, Any]]]:
    """ORT `TensorQuantOverrides` with one symmetric range per output channel of each node in
    `bad`: the weight's own range, widened `_SEVEN_BIT` times on the channels flagged True."""
    values = _initializers(model)
    overrides = {}
    for node in model.graph.node:
        if node.name not in bad or len(node.input) < 2 or node.input[1] not in values:
            continue
        weight, axis = values[node.input[1]], _weight_axis(node)
        tops = np.abs(np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)).max(1)
        tops = tops * np.where(bad[node.name], _SEVEN_BIT, 1.0)
        overrides[node.input[1]] = [
            ({"axis": axis} if c == 0 else {})
            | {"rmin": np.float32(-top), "rmax": np.float32(top)}
            for c, top in enumerate(tops)
        ]
    return overrides


def repair_overrides(quantised: Any, fp32: Any, images: np.ndarray, *, repair: str = "channels",
                     limit: float | None = None,
                     input_name: str = "input") -> tuple[dict[str, Any], dict[str, Any]]:
    """The weight overrides that keep AVX2's fast kernel from saturating, and what they did.

    `limit` defaults to `SATURATION_LIMIT` per layer ("layers") or `CHANNEL_LIMIT` per
    output channel ("channels").

    `quantised` is a first quantisation of `fp32` (the preprocessed graph the overrides
    will quantise again); the saturation is simulated on `images`. The report has
    `saturating_layers` (node: share lost), `exact_layers` and, for "channels",
    `seven_bit_channels` (node: how many of its channels).
    """
    if repair not in SATURATION_REPAIRS:
        raise ValueError(f"saturation repair must be one of {SATURATION_REPAIRS}")
    if limit is None:
        limit = SATURATION_LIMIT if repair == "layers" else CHANNEL_LIMIT
    channels = channel_saturation(quantised, images, input_name=input_name)
    saturating = _above(channels, limit)
    report: dict[str, Any] = {"saturating_layers": {n: round(s, 5) for n, s in saturating}}
    if repair == "layers":
        exact = [name for name, _ in saturating]
        report["exact_layers"] = exact
        return exact_weight_overrides(fp32, exact), report
    stem = next((n.name for n in fp32.graph.node if n.op_type == "Conv"), None)
    bad = {name: lost / np.maximum(exact, 1.0) > limit
           for name, (lost, exact) in channels.items()}
    bad = {name: flags for name, flags in bad.items() if flags.any()}
    exact = [stem] if stem in bad else []
    seven = {name: flags for name, flags in bad.items() if name != stem}
    report["exact_layers"] = exact
    report["seven_bit_channels"] = {name: int(flags.sum()) for name, flags in seven.items()}
    return exact_weight_overrides(fp32, exact) | seven_bit_overrides(fp32, seven), report


# ORT's session option that runs every integer GEMM with the exact u8 x u8 kernel; it only
# changes anything on x86 CPUs whose fast kernel saturates.
EXACT_KERNEL_OPTION = "session.x64quantprecision"


# CPU flags whose integer dot-product instructions do not saturate
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """This CPU's feature flags from /proc/cpuinfo, or None where they cannot be read."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return None


def saturating_cpu() -> bool:
    """Whether this CPU's fast u8 x s8 kernel can saturate: x86 without VNNI.

    An x86 machine whose flags cannot be read counts as saturating (the exact kernel is
    slower, never wrong).
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    flags = cpu_flags()
    return flags is None or not set(VNNI_FLAGS) & flags


def exact_kernel_needed(variant: Mapping[str, Any] | None) -> bool:
    """Whether an exported variant must run with `EXACT_KERNEL_OPTION` on this CPU.

    A static INT8 model exported without `saturation_fix` (before it existed, or with it
    turned off) has layers the fast kernel saturates: on an AVX2 CPU that cost EfficientNet-
    Lite0 14 points of agreement with FP32. Such Bundles are served with the exact kernel,
    slower but right; repaired ones and FP32 models keep the fast one.
    """
    if not variant or variant.get("method") != "static":
        return False
    if (variant.get("settings") or {}).get("saturation_fix"):
        return False
    return saturating_cpu()
