"""What the training pipeline costs on top of the network's own forward+backward.

    .venv/bin/python benchmarks/bench_pipeline.py [--model resnet_small_t] [--steps 60]

Same model, same batch size, same machine, same process:
1. bare: forward + backward + SGD step on tensors already in memory, already normalised
   (the fastest any training loop could go);
2. VisionDeck, in-memory path (`data.cache=memory`): Lightning loop, uint8 batches from the
   decoded cache, batched augmentation and normalisation, metrics and logging;
3. VisionDeck, streaming path (`data.cache=off`): DataLoader workers decoding PNG files with
   per-sample augmentation (what large data sets use).
Images/s over the same number of steps after a warm-up; overhead = 1 - pipeline/bare. Uses
the bundled sample (Fashion-MNIST, 28x28 gray). Writes benchmarks/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from rich.console import Console
from rich.table import Table

from visiondeck.config import load_recipe
from visiondeck.data.materialize import materialize
from visiondeck.models import create_model
from visiondeck.train.runner import train

RESULTS = Path(__file__).resolve().parent / "results"


class StepClock(L.Callback):
    """Times training steps after `warmup` steps, so start-up and decoding are excluded."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.seen = 0
        self.images = 0
        self.began: float | None = None
        self.ended = 0.0
        self.paused = 0.0  # validation between epochs is not training throughput
        self._val_start = 0.0

    def on_validation_start(self, trainer, module) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, module) -> None:
        if self.began is not None:
            self.paused += time.perf_counter() - self._val_start

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.seen == self.warmup:
            self.began = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.began is not None:
            labels = batch.labels if hasattr(batch, "labels") else batch[1]
            self.images += len(labels)
            self.ended = time.perf_counter()

    @property
    def rate(self) -> float:
        if self.began is None:
            return float("nan")
        return self.images / (self.ended - self.began - self.paused)


def bare_rate(model_name: str, batch: int, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = create_model(model_name, 10, in_chans=1).to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    data = torch.randn(steps + warmup, batch, 1, 28, 28)
    labels = torch.randint(0, 10, (steps + warmup, batch))
    for i in range(steps + warmup):
        if i == warmup:
            began = time.perf_counter()
        x = data[i].contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), labels[i]).backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - began)


def pipeline_rate(images: Path, work: Path, model_name: str, batch: int, steps: int,
                  warmup: int, cache: str) -> float:
    recipe = load_recipe(None, [
        f"data.source={images}", f"data.prepared={work / 'prepared'}", "data.image_size=28",
        "data.channels=1", "data.augment=light", f"data.cache={cache}", "data.val_fraction=0.1",
        "data.test_fraction=0.1", f"model.name={model_name}", "model.dropout=0.0",
        f"train.batch_size={batch}", "train.optimizer=sgd", "train.lr=0.05", "train.epochs=50",
        f"output_dir={work / 'runs'}", f"name=pipe-{cache}", "tracking.enabled=false",
    ])
    clock = StepClock(warmup)
    train(recipe, progress=False, callbacks=[clock], max_steps=steps + warmup)
    return clock.rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet_small_t")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = work / "sample"
        materialize("sample", images, progress=False)
        # twice, the first run only warming the allocator and thread pool: measured first
        # and cold, the bare loop read ~5 % slower than the pipeline that ran after it
        bare_rate(args.model, args.batch_size, args.steps // 2, args.warmup)
        bare = bare_rate(args.model, args.batch_size, args.steps, args.warmup)
        memory = pipeline_rate(images, work, args.model, args.batch_size, args.steps,
                               args.warmup, "memory")
        streaming = pipeline_rate(images, work, args.model, args.batch_size, args.steps,
                                  args.warmup, "off")
    rows = [("bare forward+backward (pre-loaded tensors)", bare),
            ("VisionDeck, in-memory data (cache=memory)", memory),
            ("VisionDeck, streaming PNG files (cache=off)", streaming)]
    table = Table(title=f"training throughput, {args.model}, batch {args.batch_size}, "
                  f"{torch.get_num_threads()} threads", title_justify="left")
    for column in ("path", "images/s", "overhead vs bare"):
        table.add_column(column, justify="right")
    for name, rate in rows:
        table.add_row(name, f"{rate:,.0f}", "-" if rate is bare else f"{1 - rate / bare:.1%}")
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pipeline.json").write_text(json.dumps({
        "model": args.model, "batch_size": args.batch_size, "steps": args.steps,
        "images_per_s": {"bare": bare, "memory": memory, "streaming": streaming},
        "overhead": {"memory": 1 - memory / bare, "streaming": 1 - streaming / bare},
        "cores": os.cpu_count(),
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
