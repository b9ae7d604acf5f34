"""`visiondeck bench BUNDLE`: how fast each way of running a Bundle is on this machine.

Times model compute only (inputs are already-prepared random tensors of the Bundle's shape,
so decoding speed does not blur the comparison; `benchmarks/bench_predict.py` measures the
whole file-to-answer path). For PyTorch eager (rebuilt from weights.safetensors), ONNX
Runtime FP32 and, when present, INT8: latency percentiles at batch 1, and throughput at each
batch size, keeping the best. Accuracy and file sizes come from bundle.json, measured on the
test split at export time. The report is saved as bench.json in the Bundle.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visiondeck.export.bundle import Bundle, load_bundle, utc_now

__all__ = ["BenchReport", "BenchRow", "bench_bundle", "save_bench"]

BENCH_FILE = "bench.json"


@dataclass(frozen=True)
class BenchRow:
    engine: str  # "pytorch", "onnxruntime-fp32", "onnxruntime-int8"
    file: str
    bytes: int
    accuracy: float | None
    p50_ms: float
    p95_ms: float
    p99_ms: float
    best_batch: int
    images_per_s: float
    per_batch: dict[int, float] = field(default_factory=dict)  # batch size -> images/s


@dataclass
class BenchReport:
    bundle: str
    rows: list[BenchRow]
    threads: int
    batch_sizes: list[int]
    seconds: float
    machine: dict[str, Any]
    created_at: str = field(default_factory=utc_now)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for row in data["rows"]:
            row["per_batch"] = {str(k): v for k, v in row["per_batch"].items()}
        return data


def _percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1e3, q)), 4)


def _time(run: Callable[[np.ndarray], Any], batch: np.ndarray, seconds: float,
          min_runs: int = 5, max_runs: int = 5000) -> list[float]:
    """Per-call wall times of `run(batch)` for about `seconds` (after 3 warm-up calls)."""
    for _ in range(3):
        run(batch)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_runs or (time.perf_counter() < deadline and len(times) < max_runs):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return times


def _measure(engine: str, file: Path, accuracy: float | None,
             run: Callable[[np.ndarray], Any], shape: tuple[int, ...],
             batch_sizes: Sequence[int], seconds: float) -> BenchRow:
    rng = np.random.default_rng(0)
    single = rng.standard_normal((1, *shape)).astype(np.float32)
    latency = _time(run, single, seconds)
    per_batch: dict[int, float] = {}
    for size in batch_sizes:
        batch = rng.standard_normal((size, *shape)).astype(np.float32)
        times = _time(run, batch, seconds / 2, min_runs=3)
        per_batch[size] = round(size / float(np.median(times)), 1)
    best = max(per_batch, key=per_batch.__getitem__)
    return BenchRow(engine, file.name, file.stat().st_size, accuracy,
                    _percentile(latency, 50), _percentile(latency, 95), _percentile(latency, 99),
                    best, per_batch[best], per_batch)


def ort_runner(path: Path, threads: int) -> Callable[[np.ndarray], Any]:
    """A CPU ONNX Runtime session as a function of a batch (`bench` and `sweep` time it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"input": x})


def _torch_runner(bundle: Bundle, threads: int) -> Callable[[np.ndarray], Any]:
    import torch

    from visiondeck.export.torch_model import load_torch_model

    torch.set_num_threads(threads)
    model = load_torch_model(bundle)

    def run(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    return run


def bench_bundle(bundle: Bundle | str | os.PathLike[str], *,
                 batch_sizes: Sequence[int] = (1, 8, 32, 64, 128), seconds: float = 2.0,
                 threads: int | None = None, torch: bool = True,
                 log: Callable[[str], None] | None = None) -> BenchReport:
    """Benchmark every engine of a Bundle; `torch=False` skips PyTorch eager (no torch)."""
    say = log or (lambda _msg: None)
    bundle = load_bundle(bundle)
    threads = threads or os.cpu_count() or 1
    shape = bundle.input.shape
    variants = bundle.variants
    parity = bundle.info.get("parity") or {}
    rows: list[BenchRow] = []
    if torch:
        say("PyTorch eager")
        rows.append(_measure("pytorch", bundle.weights_path, parity.get("pytorch_accuracy"),
                             _torch_runner(bundle, threads), shape, batch_sizes, seconds))
    for name in ("fp32", "int8"):
        if name in variants:
            say(f"ONNX Runtime {name.upper()}")
            path = bundle.onnx_path(name)
            rows.append(_measure(f"onnxruntime-{name}", path, variants[name].get("accuracy"),
                                 ort_runner(path, threads), shape, batch_sizes, seconds))
    machine = {"processor": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count(), "python": platform.python_version(),
               "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    return BenchReport(str(bundle.path), rows, threads, list(batch_sizes), seconds, machine)


def save_bench(report: BenchReport, path: str | os.PathLike[str] | None = None) -> Path:
    """Write the report as JSON (default: bench.json inside the Bundle)."""
    target = Path(path) if path is not None else Path(report.bundle) / BENCH_FILE
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    os.replace(tmp, target)
    return target
