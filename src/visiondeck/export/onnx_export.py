"""`visiondeck export RUN`: a finished run becomes a Bundle, checked against PyTorch.

Exporter choice (measured on torch 2.14 for simple_cnn, resnet_small + CBAM and timm's
EfficientNet-Lite0): both the TorchScript-based exporter (`dynamo=False`, opset 17) and the
dynamo exporter (opset 18, needs onnxscript) convert all of them with a dynamic batch axis
and agree with PyTorch to ~1e-7 (~3e-5 for Lite0); the TorchScript path takes 0.1-1.2 s
where dynamo takes 3.5-12 s, and writes slightly smaller files. So "torchscript" is the
default and "dynamo" is tried when it fails (or asked for with `exporter="dynamo"`).

Every export is verified before it is published: `onnx.checker`, then the parity check on
real validation images (max |Δ probability| and top-1 agreement against the PyTorch model,
both on the same numpy-prepared input), failing loudly past `tolerance`. The Bundle is
assembled in a hidden sibling folder and renamed into place, so a failed export never
leaves a half-written Bundle where a server could pick it up.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visiondeck.export.bundle import (
    INT8_FILE,
    MODEL_FILE,
    WEIGHTS_FILE,
    Bundle,
    Calibration,
    InputSpec,
    load_bundle,
    write_bundle_json,
)
from visiondeck.export.checks import measure_accuracy, ort_session, parity_check, torch_logits
from visiondeck.export.errors import BundleError, ExportError
from visiondeck.export.samples import iter_batches, load_samples

__all__ = ["DEFAULT_TOLERANCE", "ExportResult", "export_run"]

DEFAULT_TOLERANCE = 1e-3  # max |Δ probability| allowed between PyTorch and ONNX Runtime
MIN_AGREEMENT = 0.99  # top-1 agreement required on the parity images
MIN_INT8_AGREEMENT = 0.95  # below this, dynamic INT8 is tried as well
EXPORTERS = ("torchscript", "dynamo")
Log = Callable[[str], None]


@dataclass
class ExportResult:
    """What `export_run` produced and measured (the same figures are in bundle.json)."""

    path: Path
    bundle: Bundle
    parity: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    pruning: dict[str, Any] | None
    exporter: str
    duration_s: float
    notes: list[str] = field(default_factory=list)


def export_run(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    int8: bool = False,
    prune: float | None = None,
    prune_method: str = "unstructured",
    prune_steps: int = 200,
    prune_finetune: Any = None,
    parity_images: int = 64,
    calibration_images: int = 256,
    tolerance: float = DEFAULT_TOLERANCE,
    max_int8_drop: float = 0.01,
    int8_candidates: Sequence[Any] | None = None,
    exporter: str = "torchscript",
    reference_images: int = 1000,
    log: Log | None = None,
) -> ExportResult:
    """Export a finished run's best network as a Bundle (default folder: RUN/bundle).

    int8: also write `model.int8.onnx` (static, calibrated on `calibration_images` training
    images — 256: on EfficientNet-Lite0 they agreed with FP32 1-2 points more often than 128
    did, see benchmarks/bench_int8.py; dynamic when static fails or loses more than
    `max_int8_drop` test accuracy).
    Each of `int8_candidates` (default `quantize.default_candidates`) is tried and `int8_choice`
    keeps the fastest not measurably less faithful to FP32 on validation images; an INT8
    model losing more than `max_int8_drop` (test accuracy, or top-1 agreement with FP32) is
    recorded as not recommended, otherwise it becomes the Bundle's `default_variant`.
    prune: share of weights to prune before export, with `prune_steps` fine-tuning steps
    (`prune_finetune`: a `prune.FinetuneConfig`; default `prune.DEFAULT_FINETUNE`).
    reference_images: held-out images measured for drift monitoring's reference statistics
    (`reference.json`; 0 leaves them out and the served model then reports "no reference").
    """
    from visiondeck.train.artifacts import load_run_splits, load_trained

    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}", hint=f"use one of {EXPORTERS}")
    say = log or (lambda _msg: None)
    started = time.perf_counter()
    run = Path(run_dir)
    trained = load_trained(run)
    split, test_split = load_run_splits(run)
    spec = _input_spec(trained)
    classes = trained.classes
    model = trained.model
    notes: list[str] = []
    multilabel = bool(getattr(trained, "multilabel", False))
    if multilabel and prune is not None:
        raise ExportError("pruning is not available for multi-label runs yet",
                          hint="export without --prune (--int8 works)")

    val = split.subset("val")
    parity_source = "val"
    if not val:
        val, parity_source = split.subset("train"), "train"
        notes.append("the split has no validation images: parity was checked on training images")
    test_root, test_records = _test_records(split, test_split)

    pruning = None
    if prune is not None:
        pruning = _prune(model, split, classes, spec, trained, prune, prune_method, prune_steps,
                         say, prune_finetune)

    target = Path(out_dir) if out_dir is not None else run / "bundle"
    work = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        say(f"exporting {trained.architecture} to ONNX")
        used = _to_onnx(model, spec, work / MODEL_FILE, exporter, notes)
        _save_weights(model, work / WEIGHTS_FILE)

        samples = load_samples(split.root, val, classes, spec, limit=parity_images, seed=1,
                               multilabel=multilabel)
        if len(samples.labels) == 0:
            raise ExportError("no readable image to check the export against",
                              hint="the run's split files are missing; re-run data checks")
        parity = parity_check(model, work / MODEL_FILE, samples.images, parity_source,
                              multilabel=multilabel)
        say(f"parity on {parity['n_images']} {parity_source} images: max |Δp| "
            f"{parity['max_abs_diff']:.2e}, top-1 agreement {parity['top1_agreement']:.2%}")
        if parity["max_abs_diff"] > tolerance or parity["top1_agreement"] < MIN_AGREEMENT:
            raise ExportError(
                f"the ONNX model disagrees with PyTorch: max |Δ probability| "
                f"{parity['max_abs_diff']:.3g} (tolerance {tolerance:g}), top-1 agreement "
                f"{parity['top1_agreement']:.2%}",
                hint="try `--exporter dynamo` (or the other exporter); report the architecture "
                     "if both fail",
            )

        sessions = {"fp32": ort_session(work / MODEL_FILE)}
        int8_info: dict[str, Any] = {}
        if int8:
            say("quantising to INT8")
            held_out = load_samples(split.root, val, classes, spec, limit=256, seed=6,
                                    multilabel=multilabel)
            int8_info = _quantize(work, split, classes, spec, calibration_images, notes,
                                  int8_candidates, held_out.images, multilabel=multilabel)
            sessions["int8"] = ort_session(work / INT8_FILE)
        say(f"measuring accuracy on {len(test_records)} test images")
        scores = measure_accuracy(model, sessions, test_root, test_records, classes, spec,
                                  multilabel=multilabel)
        if int8 and int8_info["method"] == "static" and _poor(scores, max_int8_drop):
            int8_info = _try_dynamic(work, scores, int8_info, test_root, test_records, classes,
                                     spec, notes, multilabel=multilabel)
        parity["pytorch_accuracy"] = scores.get("pytorch", {}).get("accuracy")

        variants = {"fp32": _variant(work, MODEL_FILE, scores["fp32"])}
        if int8:
            variants["int8"] = (_variant(work, INT8_FILE, scores["int8"]) | int8_info
                                | _recommendation(scores, max_int8_drop))
        info = _bundle_info(trained, run, split, spec, parity, variants, pruning, used, notes)
        info["default_variant"] = "int8" if variants.get("int8", {}).get("recommended") \
            else "fp32"
        write_bundle_json(work, info)
        if reference_images > 0:
            say("measuring reference statistics for drift monitoring")
            _add_reference(work, info, split, test_root, test_records, reference_images, notes)
        load_bundle(work)  # what we publish must load
        _publish(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    bundle = load_bundle(target)
    return ExportResult(target, bundle, parity, variants, pruning, used,
                        round(time.perf_counter() - started, 2), notes)


# ------------------------------------------------------------------------------- pieces


def _input_spec(trained: Any) -> InputSpec:
    s = trained.spec
    max_pixels = trained.recipe.data.max_pixels if trained.recipe is not None else 64_000_000
    return InputSpec(int(s.image_size), int(s.channels), str(s.resize),
                     tuple(float(v) for v in s.mean), tuple(float(v) for v in s.std),
                     max_pixels=int(max_pixels))


def _test_records(split: Any, test_split: Any) -> tuple[Path, list]:
    if test_split is not None:
        return Path(test_split.root), test_split.subset("test") or list(test_split.records)
    return Path(split.root), split.subset("test")


def _add_reference(work: Path, info: dict[str, Any], split: Any, test_root: Path,
                   test_records: list, limit: int, notes: list[str]) -> None:
    """Measure the held-out images through the exported model; store reference.json."""
    from visiondeck.export.reference import compute_reference
    from visiondeck.monitor.reference import save_reference

    held_out = [(Path(split.root), split.subset("val")), (test_root, test_records)]
    reference = compute_reference(load_bundle(work), work / MODEL_FILE, held_out,
                                  (Path(split.root), split.subset("train")), limit=limit)
    if reference is None:
        notes.append("no readable held-out image: no reference statistics for monitoring")
        return
    info["reference"] = save_reference(work, reference)
    write_bundle_json(work, info)


def _to_onnx(model: Any, spec: InputSpec, path: Path, exporter: str, notes: list[str]) -> str:
    """Export with a dynamic batch axis; the other exporter is tried when the first fails."""
    import warnings

    import onnx
    import torch

    from visiondeck.export.reference import with_embedding
    from visiondeck.export.static_padding import freeze_same_padding

    example = torch.zeros((2, *spec.shape), dtype=torch.float32)
    model, _ = freeze_same_padding(model, example)  # the Bundle's size is fixed: so are pads
    module, outputs = with_embedding(model, spec, notes)
    order = [exporter, *[e for e in EXPORTERS if e != exporter]]
    errors = []
    for name in order:
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # deprecation and tracer chatter
                if name == "torchscript":
                    torch.onnx.export(module, (example,), str(path), dynamo=False,
                                      opset_version=17, input_names=["input"],
                                      output_names=outputs,
                                      dynamic_axes={"input": {0: "batch"},
                                                    **{o: {0: "batch"} for o in outputs}})
                else:
                    batch = torch.export.Dim("batch", min=1, max=65536)
                    program = torch.onnx.export(module, (example,), dynamo=True, opset_version=18,
                                                input_names=["input"], output_names=outputs,
                                                dynamic_shapes=({0: batch},), verbose=False)
                    program.optimize()
                    program.save(str(path))
            onnx.checker.check_model(str(path), full_check=True)
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        if name != exporter:
            notes.append(f"the {exporter} exporter failed; used {name}")
        return name
    raise ExportError("ONNX export failed with every exporter:\n" + "\n".join(errors),
                      hint="install the export extra (`pip install visiondeck[export]`); if it "
                           "is installed, the architecture has an operator ONNX cannot express")


def _save_weights(model: Any, path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()
             if isinstance(v, torch.Tensor)}
    save_file(state, str(path), metadata={"format": "visiondeck.bundle"})


def _quantize(work: Path, split: Any, classes: list[str], spec: InputSpec, limit: int,
              notes: list[str], candidates: Sequence[Any] | None, held_out: np.ndarray, *,
              multilabel: bool = False) -> dict[str, Any]:
    """Static INT8 with each candidate setting; `int8_choice.choose` keeps one on `held_out`."""
    from visiondeck.export.int8_choice import RULE, choose
    from visiondeck.export.quantize import (
        default_candidates,
        quantize_dynamic_int8,
        quantize_static_int8,
    )

    calib = load_samples(split.root, split.subset("train"), classes, spec, limit=limit, seed=2,
                         multilabel=multilabel)
    batches = [calib.images[i:i + 16] for i in range(0, len(calib.images), 16)]
    if not batches:
        notes.append("no readable training image to calibrate on; used dynamic quantisation")
        done = quantize_dynamic_int8(work / MODEL_FILE, work / INT8_FILE)
        return {"method": done.method, "detail": done.detail, "settings": done.settings}
    images = held_out if len(held_out) else calib.images
    built: dict[str, tuple[Path, dict[str, Any]]] = {}
    failures = []
    for settings in candidates if candidates is not None else default_candidates(
            work / MODEL_FILE):
        path = work / f"model.int8-candidate-{len(built)}.onnx"
        try:
            done = quantize_static_int8(work / MODEL_FILE, path, batches, settings=settings)
        except Exception as exc:  # an operator the static quantiser cannot handle
            path.unlink(missing_ok=True)
            failures.append(f"{settings.name}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        built[settings.name] = (path, {"method": done.method, "detail": done.detail,
                                       "settings": done.settings})
    if not built:
        notes.append(f"static INT8 failed ({'; '.join(failures)}); used dynamic quantisation")
        done = quantize_dynamic_int8(work / MODEL_FILE, work / INT8_FILE)
        return {"method": done.method, "detail": done.detail, "settings": done.settings}
    kept, tried = choose(work / MODEL_FILE, {n: p for n, (p, _) in built.items()}, images)
    os.replace(built[kept][0], work / INT8_FILE)
    for path, _ in built.values():
        path.unlink(missing_ok=True)
    source = "validation" if len(held_out) else "calibration"
    return built[kept][1] | {"selection": {"images": len(images), "source": source,
                                           "candidates": tried, "rule": RULE}}


def _recommendation(scores: dict[str, dict[str, Any]], limit: float) -> dict[str, Any]:
    """INT8 is recommended when it loses at most `limit` test accuracy and agrees with FP32
    on at least 1 - `limit` of the test images."""
    fp32, int8 = scores["fp32"].get("accuracy"), scores["int8"].get("accuracy")
    agreement = scores["int8"].get("agreement_with_fp32")
    lost = None if fp32 is None or int8 is None else round(fp32 - int8, 6)
    ok = (lost is not None and lost <= limit + 1e-9
          and agreement is not None and agreement >= 1 - limit - 1e-9)
    return {"accuracy_lost": lost, "recommended": bool(ok), "max_loss": limit}


def _poor(scores: dict[str, dict[str, Any]], limit: float) -> bool:
    """INT8 lost more than `limit` accuracy, or disagrees with FP32 on over 5% of images."""
    fp32, int8 = scores["fp32"]["accuracy"], scores["int8"]["accuracy"]
    agreement = scores["int8"].get("agreement_with_fp32")
    dropped = fp32 is not None and int8 is not None and fp32 - int8 > limit
    return dropped or (agreement is not None and agreement < MIN_INT8_AGREEMENT)


def _try_dynamic(work: Path, scores: dict[str, dict[str, Any]], static: dict[str, Any],
                 root: Path, records: list, classes: list[str], spec: InputSpec,
                 notes: list[str], *, multilabel: bool = False) -> dict[str, Any]:
    """Quantise dynamically too and keep whichever INT8 model is closer to FP32."""
    from visiondeck.export.quantize import quantize_dynamic_int8

    candidate = work / "model.int8-dynamic.onnx"
    done = quantize_dynamic_int8(work / MODEL_FILE, candidate)
    sessions = {"fp32": ort_session(work / MODEL_FILE), "int8": ort_session(candidate)}
    dynamic = measure_accuracy(None, sessions, root, records, classes, spec,
                               multilabel=multilabel)["int8"]
    old = scores["int8"]
    summary = (f"static INT8: accuracy {old['accuracy']}, agreement with FP32 "
               f"{old.get('agreement_with_fp32')}; dynamic: {dynamic['accuracy']}, "
               f"{dynamic.get('agreement_with_fp32')}")

    def rank(score: dict[str, Any]) -> tuple[float, float]:
        return (score.get("accuracy") or 0.0, score.get("agreement_with_fp32") or 0.0)

    if rank(dynamic) > rank(old):
        os.replace(candidate, work / INT8_FILE)
        scores["int8"] = dynamic
        notes.append(f"{summary}: kept dynamic")
        return {"method": done.method, "detail": done.detail, "settings": done.settings}
    candidate.unlink()
    notes.append(f"{summary}: kept static")
    return static


def _variant(work: Path, file: str, score: dict[str, Any]) -> dict[str, Any]:
    return {"file": file, "bytes": (work / file).stat().st_size, **score}


def _prune(model: Any, split: Any, classes: list[str], spec: InputSpec, trained: Any,
           amount: float, method: str, steps: int, say: Log, finetune: Any = None
           ) -> dict[str, Any]:
    from visiondeck.export.prune import PRUNE_METHODS, accuracy, prune_and_finetune

    if not 0.0 < amount < 1.0 or method not in PRUNE_METHODS:
        raise ExportError(f"cannot prune {amount} with method {method!r}",
                          hint=f"give a share between 0 and 1 and a method in {PRUNE_METHODS}")
    val = load_samples(split.root, split.subset("val"), classes, spec, limit=512, seed=3)
    train = split.subset("train")
    batch_size = trained.recipe.train.batch_size if trained.recipe is not None else 64
    lr = (trained.recipe.train.lr if trained.recipe is not None else 1e-3) * 0.1
    optimizer = trained.recipe.train.optimizer if trained.recipe is not None else "adamw"
    rng = np.random.default_rng(0)

    def batches():  # a new shuffle on every pass over the training images
        order = rng.permutation(len(train))
        return iter_batches(split.root, [train[i] for i in order], classes, spec,
                            batch_size=batch_size)

    def evaluate(net: Any) -> float | None:
        return accuracy(torch_logits(net, val.images), val.labels) if len(val.labels) else None

    say(f"pruning {amount:.0%} ({method}) and fine-tuning for {steps} steps")
    return prune_and_finetune(model, amount=amount, method=method, train_batches=batches,
                              evaluate=evaluate, steps=steps, lr=lr,
                              optimizer="sgd" if optimizer == "sgd" else "adamw",
                              finetune=finetune).to_dict()


def _read_evaluation(run: Path, classes: list[str], notes: list[str]
                     ) -> tuple[dict, dict, dict | None]:
    """Calibration, headline metrics and the confusion matrix of the run's evaluation.

    The matrix travels in the Bundle so a model card (the web page's) can show it without
    the run folder, which a served model rarely has beside it.
    """
    folder = run / "evaluation"
    calibration: dict[str, Any] = Calibration().to_dict()
    metrics: dict[str, Any] = {}
    evaluation: dict[str, Any] | None = None
    try:
        if (folder / "calibration.json").is_file():
            raw = json.loads((folder / "calibration.json").read_text())
            calibration = Calibration.from_dict(raw, classes).to_dict()
        if (folder / "metrics.json").is_file():
            raw = json.loads((folder / "metrics.json").read_text())
            headline = raw.get("headline", {}) if isinstance(raw, dict) else {}
            metrics = {k: v for k, v in headline.items() if isinstance(v, int | float | str)}
            evaluation = _evaluation_summary(raw, len(classes))
    except (json.JSONDecodeError, BundleError, AttributeError) as exc:
        notes.append(f"ignored the run's evaluation files ({exc})")
    return calibration, metrics, evaluation


def _evaluation_summary(raw: Any, k: int) -> dict[str, Any] | None:
    matrix = raw.get("confusion_matrix") if isinstance(raw, dict) else None
    counts = matrix.get("counts") if isinstance(matrix, dict) else None
    if not (isinstance(counts, list) and len(counts) == k
            and all(isinstance(row, list) and len(row) == k for row in counts)):
        return None
    return {"split": str(raw.get("split") or "test"), "n": raw.get("n"),
            "confusion_matrix": {"counts": [[int(v) for v in row] for row in counts]}}


def _bundle_info(trained: Any, run: Path, split: Any, spec: InputSpec, parity: dict,
                 variants: dict, pruning: dict | None, exporter: str, notes: list[str]
                 ) -> dict[str, Any]:
    from visiondeck import __version__

    calibration, metrics, evaluation = _read_evaluation(run, trained.classes, notes)
    if getattr(trained, "multilabel", False) and not calibration.get("label_thresholds"):
        notes.append("no per-label thresholds (run `visiondeck evaluate` before export): "
                     "every label passes at probability 0.5")
    info: dict[str, Any] = {
        "name": trained.recipe.name if trained.recipe is not None else run.name,
        "architecture": trained.architecture,
        "model": trained.model_config.model_dump(),
        "classes": list(trained.classes),
        **({"task": "multilabel"} if getattr(trained, "multilabel", False) else {}),
        "input": spec.to_dict(),
        "calibration": calibration,
        "metrics": metrics,
        "data": {"fingerprint": split.id, "train_counts": split.counts()["train"]},
        "parity": parity,
        "variants": variants,
        "source_run": str(run.resolve()),
        "export": {"exporter": exporter, "opset": 17 if exporter == "torchscript" else 18,
                   "notes": list(notes)},
        "versions": {"visiondeck": __version__, **_versions()},
    }
    if evaluation is not None:
        info["evaluation"] = evaluation
    if pruning is not None:
        info["pruning"] = pruning
    return info


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "onnx", "onnxruntime", "onnxscript", "timm"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _publish(work: Path, target: Path) -> None:
    """Rename the finished Bundle into place; only ever replaces an earlier Bundle."""
    if target.exists():
        if not (target / "bundle.json").is_file() and any(target.iterdir()):
            raise ExportError(f"{target} exists and is not a Bundle; refusing to replace it",
                              hint="choose another output folder (--out)")
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
        os.replace(work, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, target)
