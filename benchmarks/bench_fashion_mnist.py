"""Fashion-MNIST accuracy against training time on this machine: the training benchmark.

    .venv/bin/python benchmarks/bench_fashion_mnist.py [configs/fashion_mnist.yaml] [key=value ...]

Trains the recipe (official 60k train images, val carved out, official 10k test images) and,
after every epoch, scores the test set with and without flip test-time augmentation. The
time of that scoring is excluded from the training clock, so the curve reads "test accuracy
reached after T seconds of training". Prints the curve as a table and writes
benchmarks/results/fashion_mnist-<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import lightning as L
import torch
from rich.console import Console
from rich.table import Table

from visiondeck.config import load_recipe
from visiondeck.train.runner import train

RESULTS = Path(__file__).resolve().parent / "results"


@torch.no_grad()
def score(module, loader) -> tuple[float, float]:
    """Test accuracy without and with horizontal-flip TTA (mean of the two softmaxes)."""
    was_training = module.training
    module.eval()
    right = right_tta = total = 0
    for images, labels in loader:
        x = module._prepare(images, train=False)
        p = module(x).softmax(1)
        p_tta = (p + module(x.flip(-1)).softmax(1)) / 2
        right += int((p.argmax(1) == labels).sum())
        right_tta += int((p_tta.argmax(1) == labels).sum())
        total += len(labels)
    module.train(was_training)
    return right / total, right_tta / total


class TimeToAccuracy(L.Callback):
    """Scores the test split after each epoch, off the training clock."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.start = 0.0
        self.excluded = 0.0

    def on_train_start(self, trainer, module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        began = time.perf_counter()
        accuracy, accuracy_tta = score(module, trainer.datamodule.test_dataloader())
        val = trainer.callback_metrics.get("val_acc")
        self.rows.append({
            "epoch": trainer.current_epoch + 1,
            "train_s": round(began - self.start - self.excluded, 1),
            "val_acc": round(float(val), 4) if val is not None else None,
            "test_acc": round(accuracy, 4),
            "test_acc_tta": round(accuracy_tta, 4),
        })
        self.excluded += time.perf_counter() - began
        print(json.dumps(self.rows[-1]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="configs/fashion_mnist.yaml")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe, ["tracking.enabled=false", *args.overrides])
    clock = TimeToAccuracy()
    result = train(recipe, progress=False, callbacks=[clock])
    console = Console()
    table = Table(title=f"{recipe.name}: {recipe.model.name}, test accuracy vs training time",
                  title_justify="left")
    for column in ("epoch", "train time", "val acc", "test acc", "test acc (flip TTA)"):
        table.add_column(column, justify="right")
    for row in clock.rows:
        table.add_row(str(row["epoch"]), f"{row['train_s'] / 60:.1f} min",
                      f"{row['val_acc']:.4f}" if row["val_acc"] is not None else "-",
                      f"{row['test_acc']:.4f}", f"{row['test_acc_tta']:.4f}")
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"fashion_mnist-{recipe.name}.json"
    out.write_text(json.dumps({
        "recipe": recipe.model_dump(mode="json"),
        "overrides": args.overrides,
        "run_dir": str(result.run_dir),
        "curve": clock.rows,
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()},
    }, indent=2) + "\n")
    console.print(f"written {out}")


if __name__ == "__main__":
    main()
