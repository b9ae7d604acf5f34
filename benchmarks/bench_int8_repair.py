"""Where INT8 EfficientNet-Lite0 loses agreement on a CPU without VNNI, and what each repair buys.

    .venv/bin/python benchmarks/bench_int8_repair.py [--rounds 10] [--reuse] [--results PATH]

Same held-out (322), calibration (256) and selection (64) sets as bench_int8.py. Each model
is measured served (ORT's default optimised session), with graph optimisations off (ORT's
simulation, which never saturates) and in ORT's exact kernel (`session.x64quantprecision`),
and timed by the calling thread's CPU time at 1 ORT thread, batch 8, every model interleaved
with FP32 (the VM's steal time moves wall-clock figures by 20 %).

Variants: the unrepaired model; its int8 weights alone with float activations, with and
without bias correction; exact u8 weights on the layers above each saturation limit; 7-bit
weights (`reduce_range`) on those layers instead; 7-bit scales on the saturating output
channels, the stem's too; the "channels" repair at other per-channel limits, and with the
head in int8; and export's candidates as they ship (`quantize.CANDIDATES`, the head float:
the "channels" repair, exact stem and 7-bit saturating channels elsewhere, and the "layers"
repair), then which one export's rule
(`int8_choice.choose`) keeps on the selection images. Results:
benchmarks/results/int8-repair.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_int8 import CALIBRATION, EXTRA_CALIBRATION, HELD_OUT, crops, lite0_onnx, photos  # noqa: E402

RESULTS = HERE / "results" / "int8-repair.json"
LIMITS = (1e-3, 3e-4, 1e-4)
CHANNEL_LIMITS = (1e-3, 3e-4, 3e-5)  # export's CHANNEL_LIMIT, 1e-4, is its candidate's


def sets() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bench_int8.py's held-out, 256 calibration and selection images."""
    held = crops(photos(HELD_OUT), 46, seed=0)
    calibration = np.concatenate([
        crops(photos(CALIBRATION), 13, seed=1)[:128],
        crops(photos(EXTRA_CALIBRATION), 10, seed=3)[:64],
        crops(photos(CALIBRATION), 7, seed=4),
    ])[:256]
    return held, calibration, crops(photos(CALIBRATION), 7, seed=2)[:64]


Overrides = Callable[[Any, Any, np.ndarray], dict]


def quantise(fp32: Path, out: Path, calibration: np.ndarray, overrides: Overrides,
             keep_float: tuple[str, ...] = ()) -> None:
    """export's flow (`quantize_static_int8`) with the weight overrides chosen by
    `overrides(first pass, graph, sample)`, then bias correction."""
    import onnx

    from visiondeck.export import quantize as q
    from visiondeck.export.int8_repair import corrected_biases, input_means

    settings = q.Int8Settings(keep_float=keep_float)
    batches = [calibration[i : i + 16] for i in range(0, len(calibration), 16)]
    picked = calibration[:: len(calibration) // q.LOSS_IMAGES][: q.LOSS_IMAGES]
    with q._quiet(), tempfile.TemporaryDirectory() as tmp:
        source = q._preprocessed(fp32, Path(tmp))
        graph = onnx.load(str(source))
        exclude = q.shape_arithmetic_nodes(graph) + q._float_nodes(graph, keep_float)
        q._quantize(source, out, batches, settings, exclude, "input")
        chosen = overrides(onnx.load(str(out)), graph, picked)
        q._quantize(source, out, batches, settings, exclude, "input", chosen)
        corrected = Path(tmp, "corrected.onnx")
        means = input_means(graph, calibration)
        onnx.save(corrected_biases(graph, onnx.load(str(out)), means), str(corrected))
        q._quantize(corrected, out, batches, settings, exclude, "input", chosen)


def exact_layers(limit: float) -> Overrides:
    """Export's "layers" repair: exact u8 weights on each layer above `limit`."""
    from visiondeck.export.int8_repair import repair_overrides

    return lambda first, graph, picked: repair_overrides(
        first, graph, picked, repair="layers", limit=limit)[0]


def seven_bit_layers(limit: float) -> Overrides:
    def build(first: Any, graph: Any, picked: np.ndarray) -> dict:
        exact = exact_layers(limit)(first, graph, picked)
        return {w: [{"axis": o[0]["axis"], "reduce_range": True}] for w, o in exact.items()}

    return build


def channels(limit: float) -> Overrides:
    """Export's "channels" repair at another per-channel limit."""
    from visiondeck.export.int8_repair import repair_overrides

    return lambda first, graph, picked: repair_overrides(
        first, graph, picked, repair="channels", limit=limit)[0]


def seven_bit_channels(limit: float) -> Overrides:
    """7-bit ranges on every output channel above `limit`, the stem's too; export's
    "channels" repair gives the stem exact weights instead."""
    from visiondeck.export.int8_repair import channel_saturation, seven_bit_overrides

    def build(first: Any, graph: Any, picked: np.ndarray) -> dict:
        bad = {name: lost / np.maximum(total, 1.0) > limit
               for name, (lost, total) in channel_saturation(first, picked).items()}
        return seven_bit_overrides(graph, {n: flags for n, flags in bad.items() if flags.any()})

    return build


def weights_only(fp32: Any, quantised: Any, out: Path) -> None:
    """The FP32 graph computing with the quantised model's int8 weights, float activations."""
    import onnx

    from visiondeck.export.int8_repair import with_quantised_weights

    onnx.save(with_quantised_weights(fp32, quantised), str(out))


def session(path: Path, *, exact: bool = False, optimise: bool = True):
    import onnxruntime as ort

    from visiondeck.export.int8_repair import EXACT_KERNEL_OPTION

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if exact:
        options.add_session_config_entry(EXACT_KERNEL_OPTION, "1")
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    import onnx

    from visiondeck.export.checks import ort_session
    from visiondeck.export.int8_choice import (
        RULE,
        choose,
        closeness,
        cpu_ms_per_image,
        timing_session,
    )
    from visiondeck.export.int8_repair import saturating_cpu
    from visiondeck.export.quantize import CANDIDATES, Int8Settings, quantize_static_int8

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--reuse", action="store_true",
                        help="keep models an earlier run built in _work/int8-repair")
    args = parser.parse_args()
    work = HERE / "_work" / "int8-repair"
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "lite0.onnx"
    if not fp32.is_file():
        lite0_onnx(fp32)
    held, calibration, selection = sets()
    batches = [calibration[i : i + 16] for i in range(0, len(calibration), 16)]
    print(f"CPU saturates: {saturating_cpu()}; {len(held)} held-out, {len(calibration)} "
          f"calibration, {len(selection)} selection images", flush=True)

    models: dict[str, Path] = {}

    def add(name: str, build: Callable[[Path], Any]) -> None:
        start = time.perf_counter()
        path = work / f"{name}.onnx"
        if not (args.reuse and path.is_file()):
            partial = work / f"{name}.partial.onnx"  # a failed build leaves no model to reuse
            build(partial)
            partial.replace(path)
        models[name] = path
        print(f"built {name} in {time.perf_counter() - start:.0f} s", flush=True)

    unrepaired = Int8Settings(bias_correction=False, saturation_fix=False)
    add("unrepaired", lambda out: quantize_static_int8(fp32, out, batches, settings=unrepaired))
    graph, first = onnx.load(str(fp32)), onnx.load(str(models["unrepaired"]))
    add("weights-only", lambda out: weights_only(graph, first, out))

    def corrected_weights_only(out: Path) -> None:
        from visiondeck.export.int8_repair import corrected_biases, input_means

        weights_only(corrected_biases(graph, first, input_means(graph, calibration)), first, out)

    add("weights-only-bias-corrected", corrected_weights_only)
    for limit in LIMITS:
        add(f"exact-layers-{limit:g}", lambda out, lim=limit: quantise(
            fp32, out, calibration, exact_layers(lim)))
    add("7bit-layers-3e-04", lambda out: quantise(fp32, out, calibration, seven_bit_layers(3e-4)))
    add("7bit-channels", lambda out: quantise(fp32, out, calibration, seven_bit_channels(3e-4)))
    for limit in CHANNEL_LIMITS:
        add(f"channels-{limit:g}-float-head", lambda out, lim=limit: quantise(
            fp32, out, calibration, channels(lim), keep_float=("head",)))
    add("channels-1e-4-int8-head", lambda out: quantise(fp32, out, calibration, channels(1e-4)))
    for settings in CANDIDATES:
        add(f"export-{settings.name}", lambda out, s=settings: quantize_static_int8(
            fp32, out, batches, settings=s))

    reference = ort_session(fp32)
    results: dict[str, Any] = {"cpu_saturates": saturating_cpu(),
                               "load_average_before": list(os.getloadavg()), "models": {}}
    for name, path in models.items():
        row = {
            "served": closeness(reference, session(path), held),
            "no_graph_optimisation": closeness(reference, session(path, optimise=False), held),
            "exact_kernel": closeness(reference, session(path, exact=True), held),
            "selection": closeness(reference, session(path), selection),
        }
        results["models"][name] = row
        print(f"{name:40} served {row['served']['top1_agreement']:.2%} (cosine "
              f"{row['served']['embedding_cosine']:.4f})  unoptimised "
              f"{row['no_graph_optimisation']['top1_agreement']:.2%}  exact kernel "
              f"{row['exact_kernel']['top1_agreement']:.2%}  selection "
              f"{row['selection']['top1_agreement']:.2%}", flush=True)
    timed = {"fp32": (fp32, False)} | {
        n: (p, False) for n, p in models.items() if not n.startswith("weights-only")
    } | {"unrepaired, exact kernel everywhere": (models["unrepaired"], True)}
    # export's own timing (int8_choice), 3 runs of 8 images a round
    ms = cpu_ms_per_image({n: timing_session(p, exact=e) for n, (p, e) in timed.items()},
                          held, rounds=args.rounds, repeats=3)
    for name, value in ms.items():
        ratio = ms["fp32"] / value
        if name in results["models"]:
            results["models"][name]["cpu_ms_per_image"] = round(value, 2)
            results["models"][name]["over_fp32_cpu"] = round(ratio, 3)
        print(f"{name:40} {value:.1f} ms of CPU per image, {ratio:.2f}x FP32", flush=True)
    results["fp32_cpu_ms_per_image"] = round(ms["fp32"], 2)
    shipped = {s.name: models[f"export-{s.name}"] for s in CANDIDATES}
    kept, rows = choose(fp32, shipped, selection)
    results["export_choice"] = {"kept": kept, "rule": RULE, "candidates": rows}
    print(f"export keeps {kept} ({RULE}):", flush=True)
    for row in rows:
        print(f"  {row['settings']:40} selection agreement {row['top1_agreement']:.2%} cosine "
              f"{row.get('embedding_cosine', 0):.4f} {row['cpu_ms_per_image']:.1f} ms "
              f"{'as close' if row['as_close_as_closest'] else 'less faithful'}", flush=True)
    results["load_average_after"] = list(os.getloadavg())
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
