"""The seam between studies (ablation, cross-validation) and experiment tracking.

A study is one parent run holding one child run per ablation cell or CV fold. Evaluation
must not know MLflow (it lives in `visiondeck.registry`), so `ablate` and `cross_validate`
accept any object that follows `StudyTracker`; the CLI passes
`visiondeck.registry.study.study_tracker_for(recipe)`, notebooks may pass their own or none.

The calls, in order:

    tracker.start(folder, kind="ablation", name=recipe.name, params={...})  # the parent
    for cell in cells:
        child = tracker.child(run_dir, cell_recipe, params={"cell.train.loss": "focal"})
        train(cell_recipe, run_dir=run_dir, tracker=child)  # per-epoch metrics → the child
        tracker.child_done(run_dir, run_dir / "evaluation" / "metrics.json", params={...})
    tracker.finish(metrics={"accuracy_mean": ...}, artifacts=[folder / "results.json"])

`child_done` is also called for a cell reused from an earlier (maybe untracked) run, so an
interrupted study that is resumed still ends with every child recorded once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from visiondeck.config import Recipe
    from visiondeck.train.tracking import Tracker

__all__ = ["StudyTracker", "metric_key", "unfinished_on_error"]


@runtime_checkable
class StudyTracker(Protocol):
    def start(self, folder: Path, *, kind: str, name: str,
              params: Mapping[str, Any]) -> None:
        """The study begins (or resumes): the parent run, with the study's definition."""

    def child(self, run_dir: Path, recipe: Recipe, *, kind: str,
              params: Mapping[str, Any]) -> Tracker | None:
        """The training tracker of one cell or fold, nested under the parent."""

    def child_done(self, run_dir: Path, metrics_json: Path, *, kind: str,
                   params: Mapping[str, Any]) -> None:
        """A cell or fold was evaluated: its test metrics go to its child run."""

    def finish(self, *, metrics: Mapping[str, float], artifacts: Sequence[Path],
               status: str = "FINISHED") -> None:
        """The study ended: summary metrics and files on the parent (FINISHED, FAILED or
        KILLED)."""


def metric_key(*parts: str) -> str:
    """A metric name MLflow accepts (letters, digits, `_ - . /` and spaces) from free text
    such as factor levels (`model.name=resnet18`, `train.lr=1e-3`)."""
    import re

    return ".".join(re.sub(r"[^A-Za-z0-9_.\- /]+", "-", str(p)) for p in parts)


@contextlib.contextmanager
def unfinished_on_error(tracker: StudyTracker | None) -> Iterator[None]:
    """A study whose body raises ends its parent run as FAILED (KILLED on Ctrl-C).

    The success path is the caller's: only it knows the summary metrics and artifacts.
    """
    try:
        yield
    except BaseException as exc:
        if tracker is not None:
            tracker.finish(metrics={}, artifacts=[],
                           status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
