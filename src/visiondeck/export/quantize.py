"""INT8 variants with ONNX Runtime's quantiser: static (calibrated) first, dynamic as fallback.

Static QDQ quantisation fixes activation ranges from real training images, which is what
makes convolutions run in integer arithmetic; dynamic quantisation needs no data but only
quantises weights (activations are scaled at run time), so it is the fallback when static
quantisation fails on an operator or loses too much accuracy.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["QuantizeResult", "quantize_dynamic_int8", "quantize_static_int8"]


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    method: str  # "static" | "dynamic"
    detail: str = ""


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


def _preprocessed(model: Path, workdir: Path) -> Path:
    """ORT's recommended pre-pass (shape inference + graph fusion) before quantising."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = workdir / "pre.onnx"
    try:
        quant_pre_process(str(model), str(out), skip_symbolic_shape=False)
    except Exception:  # the pre-pass is an optimisation; quantising the original still works
        return model
    return out


def quantize_static_int8(fp32: Path, out: Path, calibration: list[np.ndarray], *,
                         input_name: str = "input") -> QuantizeResult:
    """QDQ INT8 (uint8 activations, per-channel int8 weights), calibrated by min/max."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    with _quiet(), tempfile.TemporaryDirectory(prefix="vd-quant-") as tmp:
        source = _preprocessed(fp32, Path(tmp))
        quantize_static(
            str(source), str(out), _reader(calibration, input_name),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"CalibTensorRangeSymmetric": False},
        )
    images = sum(len(b) for b in calibration)
    return QuantizeResult(out, "static", f"calibrated on {images} training images")


def quantize_dynamic_int8(fp32: Path, out: Path) -> QuantizeResult:
    """Weights to int8, activations quantised on the fly (no calibration data)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet(), tempfile.TemporaryDirectory(prefix="vd-quant-") as tmp:
        source = _preprocessed(fp32, Path(tmp))
        quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, per_channel=True)
    return QuantizeResult(out, "dynamic", "weights int8, activations scaled at run time")


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
