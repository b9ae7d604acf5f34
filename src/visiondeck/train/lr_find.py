"""The learning-rate finder (fastai's lr_find, through Lightning's Tuner).

It trains for a short range test with exponentially growing learning rates and suggests the
rate at the steepest fall of the (smoothed) loss; the plot is saved so the user can judge it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from visiondeck.config import Recipe

__all__ = ["LRFindResult", "find_lr"]


@dataclass(frozen=True)
class LRFindResult:
    suggestion: float
    lrs: list[float]
    losses: list[float]
    plot: Path


def find_lr(recipe: Recipe, *, out_dir: str | Path | None = None, num_training: int = 100,
            min_lr: float = 1e-6, max_lr: float = 1.0, progress: bool = True) -> LRFindResult:
    import lightning as L
    import matplotlib

    matplotlib.use("Agg")
    from lightning.pytorch.tuner import Tuner

    from visiondeck.train.runner import TrainingError, build_system

    out = Path(out_dir or Path(recipe.output_dir) / f"{recipe.name}-lr-find")
    out.mkdir(parents=True, exist_ok=True)
    built = build_system(recipe, out, progress=progress)
    with tempfile.TemporaryDirectory() as scratch:
        # as many epochs as the sweep's steps need: one epoch of a small data set would end
        # the sweep after its first few (lowest) rates; max_steps bounds it instead
        trainer = L.Trainer(default_root_dir=scratch, max_epochs=-1, max_steps=num_training,
                            logger=False,
                            enable_checkpointing=False, enable_progress_bar=progress,
                            enable_model_summary=False, accelerator=recipe.train.accelerator,
                            devices=1)
        finder = Tuner(trainer).lr_find(built.system, datamodule=built.data, min_lr=min_lr,
                                        max_lr=max_lr, num_training=num_training,
                                        update_attr=False)
    if finder is None or finder.suggestion() is None:
        raise TrainingError("the learning-rate finder found no clear minimum",
                            hint="widen the range or use more steps")
    figure = finder.plot(suggest=True)
    plot = out / "lr_find.png"
    figure.savefig(plot, dpi=120, bbox_inches="tight")
    return LRFindResult(float(finder.suggestion()), [float(v) for v in finder.results["lr"]],
                        [float(v) for v in finder.results["loss"]], plot)
