"""`ablate(recipe, vary)`: which choices matter? A grid (or one-factor-at-a-time) of runs.

Every cell trains the same recipe with a few keys changed (`train.loss=ce,focal`,
`model.attention=none,cbam`...), on the same split and the same seeds, and is evaluated on
the same test images. The main effect of a factor level is the mean metric of the cells
at that level minus the mean at the factor's first (baseline) level. Cells are written
under OUT/cells/; a cell already evaluated is not run again, and a killed one resumes from
its last checkpoint, so an interrupted ablation continues where it stopped.

With a `tracker` (a `evaluate.tracking.StudyTracker`; the CLI passes MLflow's), the
ablation is one parent run (params: factors, design, seeds, base recipe; metrics: each
row's mean and std and each level's main effect; artifacts: results.json, table.csv,
effects.png) and every cell a nested child run with its overrides as `cell.*` params.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from visiondeck._files import atomic_write_json, atomic_writer
from visiondeck.config import Recipe, apply_overrides, parse_overrides
from visiondeck.errors import ConfigError
from visiondeck.evaluate.tracking import StudyTracker, metric_key, unfinished_on_error

__all__ = ["AblationCell", "AblationResult", "CellJob", "StudyExecutor", "ablate", "parse_vary",
           "plan_cells", "run_cell", "run_in_order", "summary_metrics"]

_SECTIONS = ("train", "model", "data")


def parse_vary(items: Sequence[str]) -> dict[str, list[str]]:
    """["train.loss=ce,focal", "attention=none,cbam"] → {"train.loss": ["ce", "focal"], ...}.

    A key without its section (`loss`) is accepted when exactly one section has it.
    """
    from visiondeck.config import _all_keys  # the schema's dotted keys

    keys = _all_keys()
    factors: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise ConfigError(f"--vary {item!r} is not KEY=V1,V2,...",
                              hint="e.g. --vary train.loss=ce,focal")
        if key not in keys:
            matches = [f"{s}.{key}" for s in _SECTIONS if f"{s}.{key}" in keys]
            if len(matches) != 1:
                parse_overrides([f"{key}=x"])  # raises with a "did you mean"
            key = matches[0]
        levels = [v.strip() for v in values.split(",") if v.strip()]
        if len(levels) < 2:
            raise ConfigError(f"--vary {key} needs at least two values", hint=f"{key}=a,b")
        factors[key] = levels
    if not factors:
        raise ConfigError("nothing to vary", hint="add --vary KEY=V1,V2")
    return factors


def plan_cells(factors: Mapping[str, Sequence[str]], design: str = "grid"
               ) -> list[dict[str, str]]:
    """grid: every combination; ofat: the baseline (first levels) plus one change at a time."""
    keys = list(factors)
    if design == "grid":
        return [dict(zip(keys, combo, strict=True))
                for combo in itertools.product(*(factors[k] for k in keys))]
    if design == "ofat":
        base = {k: factors[k][0] for k in keys}
        cells = [dict(base)]
        for key in keys:
            cells += [{**base, key: level} for level in factors[key][1:]]
        return cells
    raise ConfigError(f"unknown design {design!r}", hint="use grid or ofat")


def _cell_recipe(recipe: Recipe, cell: Mapping[str, str], seed: int, name: str) -> Recipe:
    raw = apply_overrides(recipe.model_dump(mode="json"),
                          parse_overrides([f"{k}={v}" for k, v in cell.items()]))
    raw = apply_overrides(raw, {"train.seed": seed, "name": name})
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid ablation cell {dict(cell)}: {exc.errors()[0]['msg']}") \
            from None


def _slug(cell: Mapping[str, str], seed: int) -> str:
    text = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in cell.items()) + f"_s{seed}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:120]


@dataclass
class AblationCell:
    factors: dict[str, str]
    seed: int
    run_dir: Path
    headline: dict[str, float]
    reused: bool = False


@dataclass
class AblationResult:
    out_dir: Path
    factors: dict[str, list[str]]
    metric: str
    cells: list[AblationCell]
    table: list[dict[str, Any]] = field(default_factory=list)  # one row per cell, seeds merged
    effects: dict[str, dict[str, float]] = field(default_factory=dict)  # factor → level → Δ
    chart: Path | None = None


CELL_KIND = "ablation-cell"

#: runs a study's jobs: `executor(work, jobs, tracker)` yields (index, work(job, tracker)) as
#: each job ends, in any order (the default runs them here, in order; `scale.ray_study`
#: sends each to a Ray task)
StudyExecutor = Callable[[Callable[[Any, StudyTracker | None], Any], Sequence[Any],
                          StudyTracker | None], Iterable[tuple[int, Any]]]


def run_in_order(work: Callable[[Any, StudyTracker | None], Any], jobs: Sequence[Any],
                 tracker: StudyTracker | None) -> Iterator[tuple[int, Any]]:
    """The local executor: each job in this process, one after another."""
    for index, job in enumerate(jobs):
        yield index, work(job, tracker)


@dataclass(frozen=True)
class CellJob:
    """One cell × seed: everything `run_cell` needs, picklable, so the same function runs
    the cell here or in a Ray task on another node."""

    recipe: Recipe
    run_dir: Path
    evaluate: dict[str, Any]
    params: dict[str, str]

    @property
    def finished(self) -> bool:
        """Evaluated already: resuming the study reuses the result on disk."""
        return (self.run_dir / "evaluation" / "metrics.json").is_file()


def run_cell(job: CellJob, tracker: StudyTracker | None = None) -> tuple[dict[str, float], bool]:
    """Train (or resume) and evaluate one cell; (headline metrics, reused from disk).

    An evaluated cell is read back; a trained one is only evaluated; one with a checkpoint
    resumes from it; otherwise it trains. Its child run (under `tracker`'s parent) is
    created here, so a cell run in a Ray task logs its own child run.
    """
    from visiondeck.evaluate.core import evaluate_run
    from visiondeck.train.runner import resume, train

    recipe, run_dir, params = job.recipe, job.run_dir, job.params
    metrics_file = run_dir / "evaluation" / "metrics.json"
    if job.finished:
        headline, reused = json.loads(metrics_file.read_text())["headline"], True
    else:
        status = None
        if (run_dir / "run.json").is_file():
            status = json.loads((run_dir / "run.json").read_text()).get("status")
        child = tracker.child(run_dir, recipe, kind=CELL_KIND, params=params) \
            if tracker is not None and status not in ("completed", "passed", "failed_gate") \
            else None
        if status in ("completed", "passed", "failed_gate"):
            pass
        elif status is not None and (run_dir / "checkpoints" / "last.ckpt").is_file():
            resume(run_dir, progress=False, tracker=child)
        else:
            train(recipe, run_dir=run_dir, progress=False, tracker=child)
        headline, reused = evaluate_run(run_dir, **job.evaluate).headline, False
    if tracker is not None:
        tracker.child_done(run_dir, metrics_file, kind=CELL_KIND, params=params)
    return headline, reused


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _summarize(cells: list[AblationCell], factors: dict[str, list[str]], metric: str
               ) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    groups: dict[tuple, list[float]] = {}
    for cell in cells:
        key = tuple(cell.factors[k] for k in factors)
        groups.setdefault(key, []).append(cell.headline.get(metric, float("nan")))
    table = []
    for key, values in groups.items():
        table.append({**dict(zip(factors, key, strict=True)), "mean": _mean(values),
                      "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                      "seeds": len(values)})
    effects: dict[str, dict[str, float]] = {}
    for factor, levels in factors.items():
        means = {level: _mean([r["mean"] for r in table if r[factor] == level])
                 for level in levels}
        base = means[levels[0]]
        effects[factor] = {level: means[level] - base for level in levels}
    return table, effects


def ablate(recipe: Recipe, vary: Mapping[str, Sequence[str]], *, seeds: Sequence[int] = (0,),
           design: str = "grid", out_dir: str | os.PathLike[str] | None = None,
           metric: str = "accuracy", evaluate: dict[str, Any] | None = None,
           on_cell: Callable[[int, int, AblationCell], None] | None = None,
           tracker: StudyTracker | None = None, executor: StudyExecutor | None = None
           ) -> AblationResult:
    """Run (or resume) every cell × seed; write OUT/results.json, table.csv, effects.png.

    `tracker` records the study as a parent run with one nested run per cell (see the
    module's docstring); None tracks nothing. `executor` runs the cells (None: here, one
    after another; `visiondeck.scale.ray_study.RayStudyExecutor`: one Ray task each).
    """
    factors = {k: list(v) for k, v in vary.items()}
    cells_plan = plan_cells(factors, design)
    root = Path(out_dir) if out_dir else Path(recipe.output_dir) / f"{recipe.name}-ablation"
    root.mkdir(parents=True, exist_ok=True)
    options = {"gradcam_samples": 0, "n_boot": 200, "report": False, **(evaluate or {})}
    total = len(cells_plan) * len(seeds)
    jobs, plan = [], []
    for cell in cells_plan:
        for seed in seeds:
            slug = _slug(cell, seed)
            params = {**{f"cell.{k}": v for k, v in cell.items()}, "cell.seed": str(seed)}
            jobs.append(CellJob(_cell_recipe(recipe, cell, seed, f"{recipe.name}-{slug}"),
                                root / "cells" / slug, options, params))
            plan.append((dict(cell), seed))
    if tracker is not None:
        tracker.start(root, kind="ablation", name=recipe.name, params={
            "design": design, "metric": metric, "seeds": list(seeds), "cells": total,
            "vary": factors, "recipe": recipe.model_dump(mode="json")})
    with unfinished_on_error(tracker):
        finished: dict[int, AblationCell] = {}
        for index, (headline, reused) in (executor or run_in_order)(run_cell, jobs, tracker):
            outcome = AblationCell(*plan[index], jobs[index].run_dir, headline, reused)
            finished[index] = outcome
            if on_cell is not None:
                on_cell(len(finished), total, outcome)
        done = [finished[i] for i in range(len(jobs))]
        result = _write_results(recipe, root, factors, metric, design, seeds, done)
    if tracker is not None:
        tracker.finish(metrics=summary_metrics(result), artifacts=[
            root / "results.json", root / "table.csv", *([result.chart] if result.chart
                                                          else [])])
    return result


def _write_results(recipe: Recipe, root: Path, factors: dict[str, list[str]], metric: str,
                   design: str, seeds: Sequence[int], done: list[AblationCell]
                   ) -> AblationResult:
    import csv

    from visiondeck.evaluate.scores import clean_json

    table, effects = _summarize(done, factors, metric)
    result = AblationResult(root, factors, metric, done, table, effects)
    result.chart = _chart(result)
    atomic_write_json(root / "results.json", clean_json({
        "design": design, "metric": metric, "factors": factors, "seeds": list(seeds),
        "recipe": recipe.model_dump(mode="json"), "table": table, "effects": effects,
        "cells": [{"factors": c.factors, "seed": c.seed, "run": str(c.run_dir),
                   "headline": c.headline} for c in done],
    }), allow_nan=False)
    with atomic_writer(root / "table.csv", newline="") as handle:
        writer = csv.DictWriter(handle, [*factors, "mean", "std", "seeds"])
        writer.writeheader()
        writer.writerows(table)
    return result


def summary_metrics(result: AblationResult) -> dict[str, float]:
    """The ablation as flat metrics: `<metric>_mean.<cell>` (and `_std` with several seeds)
    per row, and `effect.<factor>.<level>` per factor level (0 at the baseline level)."""
    out: dict[str, float] = {}
    for row in result.table:
        cell = "_".join(f"{k.split('.')[-1]}-{row[k]}" for k in result.factors)
        out[metric_key(f"{result.metric}_mean", cell)] = row["mean"]
        if row["seeds"] > 1:
            out[metric_key(f"{result.metric}_std", cell)] = row["std"]
    for factor, levels in result.effects.items():
        for level, delta in levels.items():
            out[metric_key("effect", factor, level)] = delta
    return out


def _chart(result: AblationResult) -> Path:
    from visiondeck.evaluate import plots

    labels, values = [], []
    for factor, levels in result.factors.items():
        for level in levels:
            rows = [r["mean"] for r in result.table if r[factor] == level]
            labels.append(f"{factor.split('.')[-1]}={level}")
            values.append(_mean(rows))
    png = plots.bar_chart(labels, {result.metric: values},
                          title=f"mean {result.metric} per factor level", ylabel=result.metric)
    path = result.out_dir / "effects.png"
    path.write_bytes(png)
    return path
