"""`compare(RUN_OR_BUNDLE...)`: several models on the same test images, side by side.

Every model is scored on the *first* model's test split (its saved split, or for a Bundle
the split of the run it came from), each with its own input preparation, so the numbers
are paired image by image. Pairs of models get McNemar's test on those paired results: a
difference in accuracy is only called real when the disagreements are lopsided enough.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from visiondeck.evaluate import calibration as cal
from visiondeck.evaluate.metrics import mcnemar
from visiondeck.evaluate.predict import EvaluationError, decode_subset, predict_arrays
from visiondeck.evaluate.scores import (
    bootstrap_ci,
    clean_json,
    compute_metrics,
    headline_metrics,
)

__all__ = ["CompareResult", "ModelScore", "compare_models"]

_CHART_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro")


@dataclass
class ModelScore:
    name: str
    source: Path
    kind: str  # "run" | "bundle"
    architecture: str
    headline: dict[str, float]
    ci95: dict[str, list[float | None]]
    parameters: int
    weights_bytes: int | None
    train_time_s: float | None
    latency_ms: float  # one image, batch of 1, median
    throughput: float  # images per second at batch 64
    correct: np.ndarray = field(repr=False)


@dataclass
class CompareResult:
    out_dir: Path
    split_id: str | None
    n: int
    models: list[ModelScore]
    mcnemar: list[dict[str, Any]]
    report: Path | None = None


def _source_run(loaded: Any) -> Path:
    if loaded.kind == "run":
        return Path(loaded.source)
    run = loaded.info.get("source_run")
    if not run or not (Path(run) / "run.json").is_file():
        raise EvaluationError(
            f"the Bundle {loaded.source} does not name a run folder whose split can be read",
            hint="compare needs the test split; give the run folder instead of the Bundle")
    return Path(run)


def _temperature(loaded: Any) -> float:
    if loaded.kind == "bundle":
        return float((loaded.info.get("calibration") or {}).get("temperature") or 1.0)
    path = Path(loaded.source) / "evaluation" / "calibration.json"
    return float(json.loads(path.read_text()).get("temperature", 1.0)) if path.is_file() else 1.0


def _speed(model: Any, spec: Any, repeats: int = 20) -> tuple[float, float]:
    """(median ms for one image, images/s at batch 64) on this machine's CPU/GPU."""
    one = np.zeros((1, spec.channels, spec.image_size, spec.image_size), dtype=np.uint8)
    batch = np.zeros((64, spec.channels, spec.image_size, spec.image_size), dtype=np.uint8)
    predict_arrays(model, one, spec)  # warm-up
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        predict_arrays(model, one, spec)
        timings.append(time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(3):
        predict_arrays(model, batch, spec, batch_size=64)
    throughput = 3 * 64 / max(time.perf_counter() - started, 1e-9)
    return float(np.median(timings) * 1000.0), float(throughput)


def _facts(loaded: Any, run: Path) -> tuple[int | None, float | None]:
    weights = (Path(loaded.source) / "model" / "weights.safetensors" if loaded.kind == "run"
               else Path(loaded.source) / "weights.safetensors")
    info = json.loads((run / "run.json").read_text())
    return (weights.stat().st_size if weights.is_file() else None), info.get("duration_s")


def compare_models(sources: list[str | os.PathLike[str]], *,
                   out_dir: str | os.PathLike[str] | None = None, n_boot: int = 500,
                   report: bool = True, seed: int = 0) -> CompareResult:
    """Score every model on the first model's test split; write compare.json (+ report)."""
    from visiondeck.config import load_recipe
    from visiondeck.data.catalog import decode_limits
    from visiondeck.explain.loading import load_explainable
    from visiondeck.train.artifacts import load_run_splits

    if len(sources) < 2:
        raise EvaluationError("compare needs at least two runs or Bundles")
    models = [load_explainable(s) for s in sources]
    runs = [_source_run(m) for m in models]
    split, test_split = load_run_splits(runs[0])
    classes = list(split.classes)
    for loaded in models:
        if list(loaded.classes) != classes:
            raise EvaluationError(f"{loaded.source} has classes {loaded.classes}, not {classes}",
                                  hint="only models of the same task can be compared")
    split_ids = {json.loads((r / "run.json").read_text())["split"]["id"] for r in runs}
    if len(split_ids) > 1:
        raise EvaluationError(
            f"the models were trained on different splits ({', '.join(sorted(split_ids))})",
            hint="a model may have trained on the other's test images; compare runs of "
                 "the same data split")
    source = test_split or split
    records = source.subset("test")
    if not records:
        raise EvaluationError("the split has no test files")
    # decode with the first run's limits and reuse its decode cache (same files, same keys)
    first = json.loads((runs[0] / "run.json").read_text())["split"].get("prepared")
    cache = Path(first) / "cache" if first else None
    recipe_file = runs[0] / "recipe.yaml"
    limits = decode_limits(load_recipe(recipe_file).data if recipe_file.is_file() else None)
    scores, labels_ref, paths_ref = [], None, None
    for loaded, run in zip(models, runs, strict=True):
        arrays = decode_subset(Path(source.root), records, classes, loaded.spec,
                               limits=limits, cache_dir=cache)
        keep = {p: i for i, p in enumerate(arrays.relpaths)}
        paths_ref = [p for p in (paths_ref or arrays.relpaths) if p in keep]
        logits = predict_arrays(loaded.model, arrays.images, loaded.spec)
        scores.append((loaded, run, logits, arrays.labels, keep))
        labels_ref = arrays.labels
    assert paths_ref is not None and labels_ref is not None
    results = []
    for loaded, run, logits, labels, keep in scores:
        index = np.array([keep[p] for p in paths_ref], dtype=np.int64)
        y, probs = labels[index], cal.softmax(logits[index], _temperature(loaded))
        full = compute_metrics(y, probs, classes)
        weights_bytes, train_time = _facts(loaded, run)
        latency, throughput = _speed(loaded.model, loaded.spec)
        results.append(ModelScore(
            loaded.name if loaded.kind == "bundle" else Path(loaded.source).name,
            Path(loaded.source), loaded.kind, loaded.architecture, headline_metrics(full),
            bootstrap_ci(y, probs, n_boot=n_boot, n_boot_auc=min(n_boot, 200), seed=seed),
            sum(p.numel() for p in loaded.model.parameters()), weights_bytes, train_time,
            latency, throughput, probs.argmax(axis=1) == y))
    tests = []
    for a, b in combinations(range(len(results)), 2):
        test = mcnemar(results[a].correct, results[b].correct)
        tests.append({"a": results[a].name, "b": results[b].name, "a_only_right": test.b,
                      "b_only_right": test.c, "statistic": test.statistic,
                      "p_value": test.p_value, "exact": test.exact,
                      "significant_5pct": test.p_value < 0.05})
    target = Path(out_dir) if out_dir else Path("comparisons") / "-vs-".join(
        r.name for r in results)[:120]
    target.mkdir(parents=True, exist_ok=True)
    result = CompareResult(target, next(iter(split_ids)), len(paths_ref), results, tests)
    (target / "compare.json").write_text(json.dumps(clean_json(_as_dict(result)), indent=2,
                                                    allow_nan=False) + "\n")
    if report:
        result.report = _write_report(result)
    return result


def _as_dict(result: CompareResult) -> dict[str, Any]:
    return {"split_id": result.split_id, "n": result.n, "mcnemar": result.mcnemar,
            "models": [{k: v for k, v in vars(m).items() if k != "correct"}
                       | {"source": str(m.source)} for m in result.models]}


def _write_report(result: CompareResult) -> Path:
    from visiondeck.evaluate import plots
    from visiondeck.evaluate.report import Figure, render_template

    names = [m.name for m in result.models]
    shown = [k for k in _CHART_METRICS if all(k in m.headline for m in result.models)]
    chart = plots.bar_chart(
        shown, {m.name: [m.headline[k] for k in shown] for m in result.models},
        errors={m.name: [tuple(m.ci95[k]) if m.ci95.get(k) and None not in m.ci95[k]
                         else None for k in shown] for m in result.models},
        title=f"{result.n} test images, 95 % bootstrap intervals", ylabel="score")
    (result.out_dir / "compare.png").write_bytes(chart)
    metric_keys = sorted({k for m in result.models for k in m.headline})
    html = render_template("compare.html.j2", result=result, names=names,
                           metric_keys=metric_keys, chart=Figure("chart", "metrics", chart))
    path = result.out_dir / "report.html"
    path.write_text(html, encoding="utf-8")
    return path
