"""Reading the tracking store back: the runs behind `visiondeck runs list / show / diff`.

Plain dataclasses out, no printing: the CLI renders them as tables, notebooks use them as
they are. A run is named by its folder (which knows its MLflow run through `mlflow.json`),
its MLflow run id (or a unique prefix of it), or its run name (the folder's name; the
newest run of that name wins).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from visiondeck.registry.errors import RegistryError
from visiondeck.registry.store import Store, read_link
from visiondeck.registry.tracking import TAG

__all__ = ["RunDiff", "RunSummary", "diff_runs", "find_run", "higher_is_better",
           "list_artifacts", "list_runs", "metric_history", "nest_runs"]

#: run kinds that hold nested runs (see `registry.study`)
STUDY_KINDS = ("ablation", "cv")
_LOWER_IS_BETTER = ("loss", "error", "ece", "brier", "nll", "time", "duration")


@dataclass
class RunSummary:
    """One tracked run: identity, verdict, latest metrics, params (the recipe) and tags."""

    run_id: str
    name: str
    experiment: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED
    start_time: datetime | None
    end_time: datetime | None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    store: str = ""  # where it lives, password redacted
    #: the store it was read from (for follow-up queries such as metric history)
    source: Store | None = field(default=None, repr=False, compare=False)
    #: set by `list_runs`: nesting depth (0 = top level) and number of nested runs
    depth: int = 0
    children: int = 0

    @property
    def short_id(self) -> str:
        return self.run_id[:8]

    @property
    def verdict(self) -> str:
        """VisionDeck's status: passed, failed_gate, completed, interrupted, running..."""
        return self.tags.get(f"{TAG}status", self.status.lower())

    @property
    def kind(self) -> str:
        return self.tags.get(f"{TAG}kind", "")

    @property
    def parent_id(self) -> str | None:
        return self.tags.get("mlflow.parentRunId")

    @property
    def run_dir(self) -> str | None:
        return self.tags.get(f"{TAG}run_dir")

    @property
    def duration_s(self) -> float | None:
        if self.start_time and self.end_time:
            return (self.end_time - self.start_time).total_seconds()
        return None


def _when(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms else None


def _summary(store: Store, run: Any, experiments: dict[str, str]) -> RunSummary:
    info, data = run.info, run.data
    if info.experiment_id not in experiments:
        experiments[info.experiment_id] = store.client.get_experiment(info.experiment_id).name
    return RunSummary(info.run_id, info.run_name or info.run_id[:8],
                      experiments[info.experiment_id], info.status,
                      _when(info.start_time), _when(info.end_time), dict(data.metrics),
                      dict(data.params), dict(data.tags), store.display, store)


def list_runs(store: Store, *, experiment: str | None = None, limit: int = 50,
              nested: bool = True) -> list[RunSummary]:
    """Newest first, across all active experiments (or one), children after their parent.

    An ablation or a cross-validation is a parent run with one nested run per cell or fold:
    each child comes right after its parent (oldest child first, the order they ran), so
    a table shows the study as a block. `nested=False` leaves the children out (the
    parent's `children` count says how many there are).
    """
    client = store.client
    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise RegistryError(f"no experiment {experiment!r} in {store.display}",
                                hint="`visiondeck runs list` without --experiment shows all")
        ids = [found.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return []
    if nested:
        found_runs = client.search_runs(ids, order_by=["attributes.start_time DESC"],
                                        max_results=limit)
    else:
        found_runs = _top_level(client, ids, limit)
    names: dict[str, str] = {}
    runs = nest_runs([_summary(store, run, names) for run in found_runs], nested=nested)
    if not nested:  # the children were not fetched: count them for the studies shown
        for run in runs:
            if run.kind in STUDY_KINDS:
                quoted = run.run_id.replace("'", "")
                run.children = len(client.search_runs(
                    ids, f"tags.mlflow.parentRunId = '{quoted}'", max_results=1000))
    return runs


def _top_level(client: Any, ids: list[str], limit: int) -> list[Any]:
    """The newest `limit` runs that have no parent (a server too old for `IS NULL` in its
    search grammar is asked for more runs and filtered here)."""
    from mlflow.exceptions import MlflowException

    order = ["attributes.start_time DESC"]
    try:
        return list(client.search_runs(ids, "tags.mlflow.parentRunId IS NULL",
                                       order_by=order, max_results=limit))
    except MlflowException:
        runs = client.search_runs(ids, order_by=order, max_results=max(limit * 20, 1000))
        return [r for r in runs if "mlflow.parentRunId" not in r.data.tags][:limit]


def nest_runs(runs: list[RunSummary], *, nested: bool = True) -> list[RunSummary]:
    """Runs (newest first) reordered so each child follows its parent; a child whose
    parent is not among them stays where it was. Sets each parent's `children`."""
    present = {run.run_id for run in runs}
    children: dict[str, list[RunSummary]] = {}
    for run in runs:
        if run.parent_id in present:
            children.setdefault(run.parent_id, []).append(run)
    out: list[RunSummary] = []

    def place(run: RunSummary, depth: int) -> None:
        run.depth = depth
        kids = sorted(children.get(run.run_id, []),
                      key=lambda r: r.start_time or datetime.min.replace(tzinfo=UTC))
        run.children = len(kids)
        out.append(run)
        if nested:
            for kid in kids:
                place(kid, depth + 1)

    for run in runs:
        if run.parent_id not in present and (nested or run.parent_id is None):
            place(run, 0)
    return out


def find_run(store: Store, ref: str) -> RunSummary:
    """A run by folder, id, id prefix (6+ characters) or name."""
    from mlflow.exceptions import MlflowException

    path = Path(ref)
    if path.is_dir():
        link = read_link(path)
        if link is None:
            raise RegistryError(f"{path} was not tracked (no mlflow.json)",
                                hint="train with tracking.enabled=true (the default)")
        linked = link.store(store.uri)
        try:
            return _summary(linked, linked.client.get_run(link.run_id), {})
        except MlflowException:
            raise RegistryError(f"the MLflow run of {path} ({link.run_id}) is not in "
                                f"{linked.display}", hint="was the store moved or deleted?") \
                from None
    if re.fullmatch(r"[0-9a-f]{32}", ref):
        try:
            return _summary(store, store.client.get_run(ref), {})
        except MlflowException:
            pass
    ids = [e.experiment_id for e in store.client.search_experiments()]
    quoted = ref.replace("'", "\\'")
    matches = store.client.search_runs(ids, f"attributes.run_name = '{quoted}'",
                                       order_by=["attributes.start_time DESC"],
                                       max_results=1) if ids else []
    if not matches and re.fullmatch(r"[0-9a-f]{6,31}", ref):
        matches = [r for r in store.client.search_runs(ids, max_results=5000)
                   if r.info.run_id.startswith(ref)]
        if len(matches) > 1:
            raise RegistryError(f"{ref!r} matches {len(matches)} runs",
                                hint="give more characters of the run id")
    if not matches:
        raise RegistryError(f"no run {ref!r} in {store.display}",
                            hint="`visiondeck runs list` shows names and ids; a run folder "
                                 "works too")
    return _summary(store, matches[0], {})


def metric_history(store: Store, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric, by step (step = epoch for training metrics)."""
    points = store.client.get_metric_history(run_id, key)
    return sorted((int(p.step), float(p.value)) for p in points)


def list_artifacts(store: Store, run_id: str, path: str | None = None,
                   limit: int = 200) -> list[tuple[str, int | None]]:
    """(path, size) of a run's artifact files, depth first, at most `limit`."""
    out: list[tuple[str, int | None]] = []
    pending = [path]
    while pending and len(out) < limit:
        for item in store.client.list_artifacts(run_id, pending.pop()):
            if item.is_dir:
                pending.append(item.path)
            else:
                out.append((item.path, item.file_size))
    return sorted(out)[:limit]


def higher_is_better(metric: str) -> bool:
    return not any(word in metric.lower() for word in _LOWER_IS_BETTER)


@dataclass
class RunDiff:
    """Runs side by side: every metric, and the params (recipe keys) that differ."""

    runs: list[RunSummary]
    metrics: list[tuple[str, list[float | None], int | None]]  # key, values, best index
    params: list[tuple[str, list[str | None]]]
    same_params: int


def diff_runs(runs: list[RunSummary]) -> RunDiff:
    """Compare runs: metrics (with the best run per metric) and recipe differences."""
    keys = sorted({k for run in runs for k in run.metrics})
    metrics = []
    for key in keys:
        values = [run.metrics.get(key) for run in runs]
        present = [(v, i) for i, v in enumerate(values) if v is not None]
        best = None
        if len(present) > 1 and len({v for v, _ in present}) > 1:
            pick = max if higher_is_better(key) else min
            best = pick(present)[1]
        metrics.append((key, values, best))
    params, same = [], 0
    for key in sorted({k for run in runs for k in run.params}):
        values = [run.params.get(key) for run in runs]
        if len(set(values)) > 1:
            params.append((key, values))
        else:
            same += 1
    return RunDiff(runs, metrics, params, same)
