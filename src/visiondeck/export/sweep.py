"""`visiondeck export RUN --sweep`: every way to ship a run, measured side by side.

One Bundle is exported (FP32 plus the best INT8), then each candidate is built and measured
on the same machine in the same run: every INT8 setting of `quantize.default_candidates`, the
network structurally pruned at each ratio (fine-tuned, parity-checked like any export) and
its INT8 version, and OpenVINO as a second CPU engine when it is installed. Each row gets
test accuracy, top-1 agreement with FP32, latency p50/p99 at batch 1, throughput at one
batch size and file size. Timings are interleaved (every variant once per round, several
rounds, medians), so a machine whose load changes during the sweep shifts all rows alike.

A row is on the Pareto front when no other row is at least as accurate and at least as
fast with one of the two strictly better. The Bundle then serves by default the fastest
ONNX Runtime row that loses at most `max_loss` accuracy against FP32 and is one of its files
(pruned winners are copied in as variants `pruned-NN`, `pruned-NN-int8`); a variant losing
more is marked not recommended and is never the default. Everything is written to
`sweep.json` and to bundle.json's "sweep" key, which the web page's model card shows.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visiondeck.export.bench import ort_runner
from visiondeck.export.bundle import MODEL_FILE, load_bundle, utc_now, write_bundle_json

__all__ = ["SWEEP_FILE", "SweepReport", "SweepRow", "choose_default", "mark_pareto", "sweep_run"]

SWEEP_FILE = "sweep.json"
Log = Callable[[str], None]


@dataclass
class SweepRow:
    """One variant as measured by the sweep."""

    variant: str  # name in the Bundle when served from it ("fp32", "int8", "pruned-50"...)
    engine: str  # "onnxruntime" | "openvino"
    file: str
    bytes: int
    accuracy: float | None  # test split
    agreement: float | None  # top-1 agreement with FP32 on the test split
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    images_per_s: float = 0.0
    detail: str = ""
    pareto: bool = False
    recommended: bool = True
    default: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SweepReport:
    bundle: str
    rows: list[SweepRow]
    default_variant: str
    max_loss: float
    batch_size: int
    threads: int
    rounds: int
    machine: dict[str, Any]
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows": [r.to_dict() for r in self.rows]}


def mark_pareto(rows: Sequence[SweepRow]) -> None:
    """Set `pareto` on rows that no other row beats on accuracy and throughput together."""

    def score(row: SweepRow) -> tuple[float, float]:
        return (row.accuracy if row.accuracy is not None else float("-inf"), row.images_per_s)

    for row in rows:
        a, t = score(row)
        row.pareto = not any(
            (b >= a and u >= t) and (b > a or u > t) for b, u in (score(o) for o in rows)
        )


def choose_default(rows: Sequence[SweepRow], max_loss: float, servable: set[str]) -> str:
    """Mark recommendations and return the variant to serve by default.

    Recommended: loses at most `max_loss` test accuracy and, for FP32's own network
    quantised, agrees with FP32 on at least 1 - `max_loss` of the test images (a pruned,
    retrained network is judged on accuracy alone). Default: the fastest recommended ONNX
    Runtime row among `servable` variants (FP32 when none qualifies) - on the front of the rows the
    server could run, since no recommended row is both faster and more accurate.
    """
    fp32 = next((r for r in rows if r.variant == "fp32" and r.engine == "onnxruntime"), None)
    base = fp32.accuracy if fp32 is not None else None
    for row in rows:
        lost_ok = base is None or row.accuracy is None or base - row.accuracy <= max_loss + 1e-9
        # agreement only binds a quantisation of FP32's own network: a pruned network is
        # retrained, so only its accuracy is comparable
        same_network = not row.variant.startswith("pruned")
        agree_ok = not same_network or row.agreement is None or row.agreement >= 1 - max_loss - 1e-9
        row.recommended = lost_ok and agree_ok
    pool = [
        r for r in rows if r.recommended and r.variant in servable and r.engine == "onnxruntime"
    ]
    best = max(pool, key=lambda r: (r.images_per_s, r.accuracy or 0.0), default=None)
    chosen = best.variant if best is not None else "fp32"
    for row in rows:
        row.default = row.engine == "onnxruntime" and row.variant == chosen
    return chosen


# ------------------------------------------------------------------------------ measuring


def _openvino_runner(path: Path, threads: int) -> Callable[[np.ndarray], Any]:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads})
    output = compiled.output("logits")
    return lambda x: compiled({"input": x})[output]


def openvino_available() -> bool:
    """OpenVINO is an optional second CPU engine (`pip install openvino`)."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def interleaved_timings(
    runners: dict[str, Callable[[np.ndarray], Any]],
    shape: tuple[int, ...],
    *,
    batch_size: int = 32,
    rounds: int = 5,
    seconds: float = 0.4,
) -> dict[str, dict[str, float]]:
    """p50/p99 latency at batch 1 and median throughput at `batch_size`, per runner.

    Each round runs every runner for `seconds` at batch 1 and again at `batch_size`, so a
    load change on a shared machine hits every variant in the same round.
    """
    rng = np.random.default_rng(0)
    single = rng.standard_normal((1, *shape)).astype(np.float32)
    batch = rng.standard_normal((batch_size, *shape)).astype(np.float32)
    latency: dict[str, list[float]] = {name: [] for name in runners}
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():  # warm-up
        run(single)
        run(batch)
    for _ in range(rounds):
        for name, run in runners.items():
            deadline = time.perf_counter() + seconds
            while True:
                start = time.perf_counter()
                run(single)
                latency[name].append(time.perf_counter() - start)
                if time.perf_counter() > deadline:
                    break
            calls, start = 0, time.perf_counter()
            while calls < 1 or time.perf_counter() - start < seconds:
                run(batch)
                calls += 1
            rates[name].append(calls * batch_size / (time.perf_counter() - start))
    return {
        name: {
            "p50_ms": round(float(np.percentile(latency[name], 50)) * 1e3, 4),
            "p99_ms": round(float(np.percentile(latency[name], 99)) * 1e3, 4),
            "images_per_s": round(float(np.median(rates[name])), 1),
        }
        for name in runners
    }


# ------------------------------------------------------------------------------ the sweep


def sweep_run(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    prune_ratios: Sequence[float] = (0.25, 0.5),
    prune_steps: int = 300,
    prune_finetune: Any = None,
    int8_candidates: Sequence[Any] | None = None,
    max_loss: float = 0.01,
    batch_size: int = 32,
    rounds: int = 5,
    seconds: float = 0.4,
    threads: int | None = None,
    openvino: bool = True,
    log: Log | None = None,
) -> SweepReport:
    """Export `run_dir` and measure every variant; the Bundle records the default."""
    from visiondeck.export.checks import measure_accuracy, ort_session
    from visiondeck.export.onnx_export import export_run
    from visiondeck.export.quantize import default_candidates, quantize_static_int8
    from visiondeck.export.samples import load_samples
    from visiondeck.train.artifacts import load_run_splits

    say = log or (lambda _msg: None)
    threads = threads or os.cpu_count() or 1
    say("exporting FP32 and INT8")
    result = export_run(
        run_dir, out_dir, int8=True, int8_candidates=int8_candidates, max_int8_drop=max_loss,
        log=say,
    )
    folder = result.path
    candidates = list(int8_candidates if int8_candidates is not None
                      else default_candidates(result.bundle.onnx_path("fp32")))
    bundle = result.bundle
    split, test_split = load_run_splits(Path(run_dir))
    if test_split is not None:
        test_root, test_records = (
            Path(test_split.root),
            (test_split.subset("test") or list(test_split.records)),
        )
    else:
        test_root, test_records = Path(split.root), split.subset("test")
    calib = load_samples(
        split.root, split.subset("train"), bundle.classes, bundle.input, limit=128, seed=2
    )
    batches = [calib.images[i : i + 16] for i in range(0, len(calib.images), 16)]
    best = (bundle.variants["int8"].get("settings") or {}).get("name")

    files: dict[str, tuple[Path, str]] = {
        "fp32": (folder / MODEL_FILE, "float32"),
        "int8": (bundle.onnx_path("int8"), f"INT8 {best} (export's choice)"),
    }
    scratch = Path(tempfile.mkdtemp(prefix="vd-sweep-"))
    try:
        for settings in candidates:
            if settings.name == best:
                continue
            say(f"INT8 {settings.name}")
            path = scratch / f"int8-{settings.name}.onnx"
            try:
                quantize_static_int8(folder / MODEL_FILE, path, batches, settings=settings)
            except Exception as exc:  # one setting failing must not sink the sweep
                say(f"INT8 {settings.name} failed: {type(exc).__name__}")
                continue
            files[f"int8-{settings.name}"] = (path, f"INT8 {settings.name}")
        for ratio in prune_ratios:
            name = f"pruned-{round(ratio * 100)}"
            say(f"pruning {ratio:.0%} of the channels and fine-tuning ({prune_steps} steps)")
            pruned = export_run(
                run_dir,
                scratch / name,
                prune=ratio,
                prune_method="structured",
                prune_steps=prune_steps,
                prune_finetune=prune_finetune,
                int8=True,
                int8_candidates=[c for c in candidates if c.name == best] or candidates[:1],
                reference_images=0,
                max_int8_drop=max_loss,
            )
            info = pruned.pruning or {}
            detail = (
                f"{info.get('parameters_before', 0):,} → "
                f"{info.get('parameters_after', 0):,} parameters"
            )
            files[name] = (pruned.path / MODEL_FILE, detail)
            files[f"{name}-int8"] = (pruned.bundle.onnx_path("int8"), f"{detail}, INT8 {best}")

        say(f"measuring accuracy on {len(test_records)} test images")
        sessions = {name: ort_session(path) for name, (path, _) in files.items()}
        scores = measure_accuracy(
            None, sessions, test_root, test_records, bundle.classes, bundle.input
        )
        runners = {
            (name, "onnxruntime"): ort_runner(path, threads) for name, (path, _) in files.items()
        }
        if openvino and openvino_available():
            for name in ("fp32", "int8"):
                runners[(name, "openvino")] = _openvino_runner(files[name][0], threads)
        say(f"timing {len(runners)} variants, {rounds} interleaved rounds")
        keyed = {f"{n}@{e}": r for (n, e), r in runners.items()}
        times = interleaved_timings(
            keyed, bundle.input.shape, batch_size=batch_size, rounds=rounds, seconds=seconds
        )
        rows = []
        for name, engine in runners:
            path, detail = files[name]
            score = scores[name]
            rows.append(
                SweepRow(
                    name,
                    engine,
                    path.name,
                    path.stat().st_size,
                    score.get("accuracy"),
                    1.0 if name == "fp32" else score.get("agreement_with_fp32"),
                    detail=detail,
                    **times[f"{name}@{engine}"],
                )
            )
        mark_pareto(rows)
        servable = {"fp32", "int8", *(r.variant for r in rows if r.variant.startswith("pruned"))}
        default = choose_default(rows, max_loss, servable)
        _record(folder, rows, default, files)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    import platform

    report = SweepReport(
        str(folder),
        rows,
        default,
        max_loss,
        batch_size,
        threads,
        rounds,
        {
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average": list(os.getloadavg()),
        },
        utc_now(),
    )
    (folder / SWEEP_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _record(
    folder: Path, rows: list[SweepRow], default: str, files: dict[str, tuple[Path, str]]
) -> None:
    """Copy a pruned default into the Bundle and write the sweep into bundle.json."""
    bundle = load_bundle(folder)
    info = dict(bundle.info)
    variants = dict(info.get("variants") or {})
    if default not in variants:
        source = files[default][0]
        target = f"model.{default}.onnx"
        shutil.copyfile(source, folder / target)
        row = next(r for r in rows if r.variant == default and r.engine == "onnxruntime")
        variants[default] = {
            "file": target,
            "bytes": row.bytes,
            "accuracy": row.accuracy,
            "agreement_with_fp32": row.agreement,
            "recommended": True,
            "detail": row.detail,
        }
    info["variants"] = variants
    info["default_variant"] = default
    info["sweep"] = {
        "created_at": utc_now(),
        "default_variant": default,
        "rows": [r.to_dict() for r in rows],
    }
    write_bundle_json(folder, info)
