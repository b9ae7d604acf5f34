"""INT8 variants with ONNX Runtime's quantiser: static (calibrated) first, dynamic as fallback.

Static QDQ quantisation fixes activation ranges from real training images, which is what
makes convolutions run in integer arithmetic; dynamic quantisation needs no data but only
quantises weights (activations are scaled at run time), so it is the fallback when static
quantisation fails on an operator or loses too much accuracy.

Shape arithmetic is never quantised. Networks with TensorFlow-style "same" padding (timm's
`tf_efficientnet_lite*`) compute each stride-2 convolution's padding in the graph itself:
Shape → Div → Ceil → Sub → Mul → Pad amounts. ORT's quantiser puts Q/DQ pairs on those
float Mul/Add/Sub nodes like on any activation, so a padding of 1 can round to 0, a 28×28
map becomes 27×27 and every later layer is shifted: on EfficientNet-Lite0 that alone was
the whole "INT8 loses 10 points" defect (embedding cosine 0.92 → 0.99, measured layer by
layer with `layer_losses`). `shape_arithmetic_nodes` finds every node computed from a
Shape output and constants only, and they stay float.

The remaining knobs (`Int8Settings`): calibration method (MinMax, Entropy, Percentile),
asymmetric uint8 or symmetric int8 activations, layers kept in float by family (the first
conv, depthwise convs, the head) or by measurement (`float_worst`: the k layers with the
lowest SNR in a first pass, `worst_layers`), and the two repairs of `int8_repair` (7-bit or
exact weights where AVX2's kernel saturates, bias correction), on by default. Export tries a few
candidates (`CANDIDATES`) and `int8_choice` keeps one.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from visiondeck.export.int8_repair import SATURATION_REPAIRS

__all__ = [
    "CANDIDATES",
    "Int8Settings",
    "QuantizeResult",
    "default_candidates",
    "head_share",
    "layer_losses",
    "quantize_dynamic_int8",
    "quantize_static_int8",
    "shape_arithmetic_nodes",
    "worst_layers",
]

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
FLOAT_GROUPS = ("stem", "depthwise", "head")


@dataclass(frozen=True)
class Int8Settings:
    """One way to quantise statically; `name` is how bundle.json and the sweep refer to it."""

    calibration: str = "minmax"  # minmax | entropy | percentile
    activations: str = "uint8"  # uint8 (asymmetric ranges) | int8 (symmetric ranges)
    keep_float: tuple[str, ...] = ()  # subsets of FLOAT_GROUPS left unquantised
    per_channel: bool = True  # one weight scale per output channel
    float_worst: int = 0  # layers with the lowest measured SNR in a first pass, kept float
    bias_correction: bool = True  # cancel the int8 weights' mean error (int8_repair)
    saturation_fix: bool = True  # keep AVX2's u8 x s8 kernel from saturating (int8_repair)
    saturation_repair: str = "channels"  # how: int8_repair.SATURATION_REPAIRS

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATION_METHODS:
            raise ValueError(f"calibration must be one of {CALIBRATION_METHODS}")
        if self.activations not in ("uint8", "int8"):
            raise ValueError("activations must be uint8 or int8")
        if not set(self.keep_float) <= set(FLOAT_GROUPS):
            raise ValueError(f"keep_float takes {FLOAT_GROUPS}")
        if self.float_worst < 0:
            raise ValueError("float_worst must be 0 or more")
        if self.saturation_repair not in SATURATION_REPAIRS:
            raise ValueError(f"saturation_repair must be one of {SATURATION_REPAIRS}")

    @property
    def name(self) -> str:
        parts = [self.calibration, "u8" if self.activations == "uint8" else "s8sym"]
        if not self.per_channel:
            parts.append("per-tensor")
        parts += [f"float-{group}" for group in self.keep_float]
        if self.float_worst:
            parts.append(f"float-worst{self.float_worst}")
        if not self.bias_correction:
            parts.append("no-bias-correction")
        if not self.saturation_fix:
            parts.append("no-saturation-fix")
        elif self.saturation_repair == "layers":
            parts.append("exact-layers")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self), "keep_float": list(self.keep_float)}


# Tried at export, and `int8_choice` keeps one. Percentile and Entropy calibration are
# available but not tried by default: on Lite0 they kept as much as MinMax (embedding cosine
# 0.992 vs 0.991, top-1 agreement 92.9 % vs 92.6 % on the held-out photos of
# benchmarks/bench_int8.py) and their histograms took ~10x longer to collect. Nor is
# `float_worst`: on Lite0, k = 2, 4, 8 layers kept float agreed no better than none (92.9,
# 92.5, 90.7 % vs 92.5 %; all below it on the selection images) for twice the quantisation
# time. Nor are symmetric int8 activations (`activations="int8"`): ONNX Runtime runs them at
# 0.5-0.7x FP32 on both CPUs measured, and on AVX2 without VNNI its s8 kernel saturates
# (46 % agreement; `int8_repair` covers u8 only). Nor is the head in int8: on Lite0 it cost
# 0.9-1.2 points of agreement on the held-out photos in each of three runs (now 96.9 vs
# 98.1 %, bench_int8_repair.py and bench_int8.py) for ~0.1x of speed, a difference export's
# few validation images cannot see, so `int8_choice` would keep it for its speed (except
# where the head is most of the network: `default_candidates`). Exact u8 weights on every
# saturating layer are the fallback when 7-bit channels lose agreement: slower, as faithful
# on Lite0 (one run each way).
CANDIDATES: tuple[Int8Settings, ...] = (
    Int8Settings(keep_float=("head",)),
    Int8Settings(keep_float=("head",), saturation_repair="layers"),
)
# Where the head holds more than this share of the weights (a small CNN whose last conv is
# most of it), keeping it float leaves INT8 nearly FP32's size: it is quantised too.
HEAD_SHARE_LIMIT = 0.5


def head_share(model: Any) -> float:
    """The share of the weighted layers' parameters that the "head" group holds."""
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    weighted = [n for n in model.graph.node if n.op_type in _WEIGHTED and len(n.input) > 1]
    total = sum(sizes.get(n.input[1], 0) for n in weighted)
    head = set(_float_nodes(model, ("head",)))
    return sum(sizes.get(n.input[1], 0) for n in weighted if n.name in head) / max(total, 1)


def default_candidates(fp32: Path) -> tuple[Int8Settings, ...]:
    """`CANDIDATES`, or where the head is most of the network (`HEAD_SHARE_LIMIT`), the
    same settings with the head quantised too."""
    import onnx

    if head_share(onnx.load(str(fp32))) <= HEAD_SHARE_LIMIT:
        return CANDIDATES
    return tuple(replace(c, keep_float=tuple(g for g in c.keep_float if g != "head"))
                 for c in CANDIDATES)


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    method: str  # "static" | "dynamic"
    detail: str = ""
    settings: dict[str, Any] = field(default_factory=dict)


def _reader(batches: Iterable[np.ndarray], input_name: str):
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        """Feeds the calibration batches once, as ORT's calibrator expects."""

        def __init__(self) -> None:
            self._items: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._items, None)
            return None if batch is None else {input_name: np.ascontiguousarray(batch, np.float32)}

        def rewind(self) -> None:  # pragma: no cover - only for multi-pass calibrators
            self._items = iter(batches)

    return _Reader()


def _even_batches(batches: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The same images in equal-sized batches: ORT's histogram calibrators stack per-batch
    outputs and fail on a short last batch."""
    images = np.concatenate(list(batches)) if batches else np.empty((0,), np.float32)
    size = next(s for s in (16, 8, 4, 2, 1) if len(images) % s == 0)
    return [images[i : i + size] for i in range(0, len(images), size)]


def _preprocessed(model: Path, workdir: Path) -> Path:
    """ORT's recommended pre-pass (shape inference + graph fusion) before quantising."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = workdir / "pre.onnx"
    try:
        quant_pre_process(str(model), str(out), skip_symbolic_shape=False)
    except Exception:  # the pre-pass is an optimisation; quantising the original still works
        return model
    return out


def shape_arithmetic_nodes(model: Any) -> list[str]:
    """Nodes whose every input is a Shape output, derived from one, or a constant.

    They compute sizes and paddings, not activations: quantising them changes the shapes.
    """
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    derived: set[str] = set()
    names = []
    for node in graph.node:  # ONNX graphs are topologically sorted
        if node.op_type == "Constant":
            constants.update(node.output)
            continue
        inputs = [i for i in node.input if i]
        from_shape = any(i in derived for i in inputs) and all(
            i in derived or i in constants for i in inputs
        )
        if node.op_type == "Shape" or from_shape:
            derived.update(node.output)
            names.append(node.name)
    return names


_ACTIVATIONS = ("Clip", "Relu", "LeakyRelu", "HardSigmoid", "HardSwish", "Sigmoid")
_WEIGHTED = ("Conv", "Gemm", "MatMul")


def _float_nodes(model: Any, groups: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    """Node names of the layer groups kept in float (first conv, depthwise convs, head: the
    classifier and the last conv), plus the weighted nodes in `extra`.

    A conv's activation (ReLU6 as Clip, ReLU, HardSwish...) stays float with it: quantised
    alone, the activation's input would get the conv's wide pre-activation range instead of
    the fused [0, 6], which costs more than the float conv saves (measured on Lite0).
    """
    nodes = list(model.graph.node)
    convs = [n for n in nodes if n.op_type == "Conv"]
    chosen = []
    if "stem" in groups and convs:
        chosen.append(convs[0])
    if "depthwise" in groups:
        chosen += [n for n in convs if next((a.i for a in n.attribute if a.name == "group"), 1) > 1]
    if "head" in groups:
        chosen += [n for n in nodes if n.op_type in ("Gemm", "MatMul")]
        chosen += convs[-1:]  # the head conv (EfficientNet's conv_head) before the pool
    wanted = set(extra)
    chosen += [n for n in nodes if n.name in wanted]
    names = [n.name for n in chosen]
    for node in chosen:
        consumers = [n for n in nodes if node.output[0] in n.input]
        if len(consumers) == 1 and consumers[0].op_type in _ACTIVATIONS:
            names.append(consumers[0].name)
    return list(dict.fromkeys(names))


def worst_layers(model: Any, losses: Sequence[tuple[str, float]], k: int) -> list[str]:
    """The `k` weighted nodes (Conv, Gemm, MatMul) whose outputs, or whose activation's
    outputs, have the lowest signal-to-quantisation-noise ratio in `losses`.

    Measured, not guessed by layer family: on Lite0 the linear-bottleneck 1×1 convs of the
    later blocks (`conv_pwl`) lose most, not the stem or the depthwise convs.
    """
    nodes = list(model.graph.node)
    producer = {out: node for node in nodes for out in node.output}
    feeds = {}  # an activation's output -> the weighted node in front of it
    for node in nodes:
        source = producer.get(node.input[0]) if node.input else None
        if node.op_type in _ACTIVATIONS and source is not None and source.op_type in _WEIGHTED:
            feeds[node.output[0]] = source
    chosen: list[str] = []
    for tensor, _db in sorted(losses, key=lambda kv: kv[1]):
        node = producer.get(tensor)
        node = node if node is not None and node.op_type in _WEIGHTED else feeds.get(tensor)
        if node is not None and node.name not in chosen:
            chosen.append(node.name)
        if len(chosen) == k:
            break
    return chosen


def _quantize(source: Path, out: Path, calibration: list[np.ndarray], settings: Int8Settings,
              exclude: list[str], input_name: str,
              overrides: dict[str, list[dict[str, Any]]] | None = None) -> None:
    """ORT's static quantiser, with per-tensor `overrides` (`int8_repair.repair_overrides`)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[settings.calibration]
    symmetric = settings.activations == "int8"
    quantize_static(
        str(source),
        str(out),
        _reader(_even_batches(calibration), input_name),
        quant_format=QuantFormat.QDQ,
        per_channel=settings.per_channel,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=method,
        nodes_to_exclude=exclude,
        extra_options={
            "CalibTensorRangeSymmetric": symmetric,
            "ActivationSymmetric": symmetric,
            "TensorQuantOverrides": overrides or {},
        },
    )


# Images of the calibration set on which the first pass of `float_worst` measures each
# layer's SNR, and `saturating_layers` its pair sums: every activation of the network is
# kept for each, so few.
LOSS_IMAGES = 8


def quantize_static_int8(
    fp32: Path,
    out: Path,
    calibration: list[np.ndarray],
    *,
    settings: Int8Settings | None = None,
    input_name: str = "input",
) -> QuantizeResult:
    """QDQ INT8 with per-channel int8 weights, calibrated on `calibration` batches.

    With `settings.float_worst`, a first pass quantises everything else, measures every
    layer's SNR on a few calibration images (`layer_losses`) and the worst layers are kept
    float in the second pass. Then `int8_repair`: the weights that AVX2's u8 × s8 kernel
    would saturate get 7-bit or exact u8 ranges (`saturation_fix`, `saturation_repair`;
    per-tensor weights always get exact ones), and the biases are corrected for the int8
    weights' mean error (`bias_correction`); each is one more quantisation pass.
    """
    import onnx

    from visiondeck.export.int8_repair import corrected_biases, input_means, repair_overrides

    settings = settings or Int8Settings()
    worst: list[str] = []
    with _quiet(), tempfile.TemporaryDirectory(prefix="vd-quant-") as tmp:
        source = _preprocessed(fp32, Path(tmp))
        graph = onnx.load(str(source))
        shapes = shape_arithmetic_nodes(graph)
        floats = _float_nodes(graph, settings.keep_float)
        images = np.concatenate(list(calibration))
        picked = images[:: max(1, len(images) // LOSS_IMAGES)][:LOSS_IMAGES]
        if settings.float_worst:
            first = Path(tmp, "first.onnx")
            _quantize(source, first, calibration, settings, shapes + floats, input_name)
            losses = layer_losses(source, first, picked, input_name=input_name)
            worst = worst_layers(graph, losses, settings.float_worst)
            floats = _float_nodes(graph, settings.keep_float, worst)
        exclude = shapes + floats
        _quantize(source, out, calibration, settings, exclude, input_name)
        overrides: dict[str, Any] = {}
        repaired: dict[str, Any] = {"saturating_layers": {}}
        if settings.saturation_fix:
            # 7-bit ranges are per channel: per-tensor weights get exact ones
            repair = settings.saturation_repair if settings.per_channel else "layers"
            overrides, repaired = repair_overrides(onnx.load(str(out)), graph, picked,
                                                   repair=repair, input_name=input_name)
        if overrides:
            _quantize(source, out, calibration, settings, exclude, input_name, overrides)
        if settings.bias_correction:
            means = input_means(graph, images, input_name=input_name)
            corrected = Path(tmp, "corrected.onnx")
            onnx.save(corrected_biases(graph, onnx.load(str(out)), means), str(corrected))
            _quantize(corrected, out, calibration, settings, exclude, input_name, overrides)
    detail = f"{settings.name}, calibrated on {len(images)} training images"
    if floats:
        detail += f", {len(floats)} layer(s) kept float"
    if repaired.get("exact_layers"):
        detail += f", {len(repaired['exact_layers'])} saturating layer(s) given exact u8 weights"
    if repaired.get("seven_bit_channels"):
        seven = repaired["seven_bit_channels"]
        detail += (f", {sum(seven.values())} saturating channel(s) in {len(seven)} layer(s)"
                   " given 7-bit ranges")
    extra: dict[str, Any] = {
        "shape_nodes_kept_float": len(shapes),
        "layers_kept_float": len(floats),
        **repaired,
    }
    if worst:
        extra["worst_layers"] = worst
    return QuantizeResult(out, "static", detail, settings.to_dict() | extra)


def quantize_dynamic_int8(fp32: Path, out: Path) -> QuantizeResult:
    """Weights to int8, activations quantised on the fly (no calibration data)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet(), tempfile.TemporaryDirectory(prefix="vd-quant-") as tmp:
        source = _preprocessed(fp32, Path(tmp))
        quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, per_channel=True)
    return QuantizeResult(
        out, "dynamic", "weights int8, activations scaled at run time", {"name": "dynamic"}
    )


def layer_losses(
    fp32: Path, int8: Path, images: np.ndarray, *, input_name: str = "input"
) -> list[tuple[str, float]]:
    """Signal-to-quantisation-noise ratio (dB) of every activation INT8 shares with FP32.

    ORT's QDQ debugging tools run both models with every intermediate tensor as an output
    and compare the INT8 model's dequantised tensor with FP32's. A tensor whose shape
    differs between the two (a shifted padding) is reported at -inf dB. Graph order.
    """
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    with _quiet(), tempfile.TemporaryDirectory(prefix="vd-qdbg-") as tmp:
        float_aug, quant_aug = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
        modify_model_output_intermediate_tensors(str(fp32), str(float_aug))
        modify_model_output_intermediate_tensors(str(int8), str(quant_aug))
        batches = [images[i : i + 1] for i in range(len(images))]
        reference = collect_activations(str(float_aug), _reader(batches, input_name))
        quantised = collect_activations(str(quant_aug), _reader(batches, input_name))
    matched = create_activation_matching(quantised, reference)
    out = []
    for name, pair in matched.items():
        if "float" not in pair or "post_qdq" not in pair:
            continue
        ref = np.concatenate([np.ravel(a) for a in pair["float"]])
        got = np.concatenate([np.ravel(a) for a in pair["post_qdq"]])
        if ref.shape != got.shape:
            out.append((name, float("-inf")))
            continue
        noise = max(float(np.linalg.norm(ref - got)), 1e-12)
        out.append((name, round(20 * float(np.log10(max(np.linalg.norm(ref), 1e-12) / noise)), 2)))
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The quantiser logs every skipped node through the root logger; users get our summary.

    Levels are restored afterwards, so the caller's logging setup is untouched.
    """
    loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
