"""The CIFAR-10 seed's training style on Fashion-MNIST, against VisionDeck's recipe.

    .venv/bin/python benchmarks/bench_seed_baseline.py [--epochs 10] [--recipe-curve FILE]

The seed (a CIFAR-10 CNN with Docker and a Flask API) trains its SimpleCNN (3 conv blocks
32/64/128 with BatchNorm and max-pool, 2 FC with dropout 0.5) with Adam 1e-3, batch 64, 10
epochs, in a plain PyTorch loop over an ImageFolder with per-sample torchvision transforms
(random flip, random crop with padding, to-tensor, normalise). This script does exactly that
on the Fashion-MNIST PNGs (60k train, official 10k test), scoring the test set after each
epoch off the clock, then compares with VisionDeck's curve from bench_fashion_mnist.py (run
on the same machine): how much sooner VisionDeck's recipe reaches the seed's final accuracy.
Writes benchmarks/results/seed_baseline.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from visiondeck.data.sources import open_source
from visiondeck.models import create_model

RESULTS = Path(__file__).resolve().parent / "results"


def loaders(batch_size: int, workers: int) -> tuple[DataLoader, DataLoader]:
    train_root = open_source("builtin:fashion-mnist/train").root
    test_root = open_source("builtin:fashion-mnist/test").root
    norm = transforms.Normalize((0.286,), (0.353,))
    train_tf = transforms.Compose([
        transforms.Grayscale(), transforms.RandomHorizontalFlip(),
        transforms.RandomCrop(28, padding=4), transforms.ToTensor(), norm,
    ])
    test_tf = transforms.Compose([transforms.Grayscale(), transforms.ToTensor(), norm])
    train_set = datasets.ImageFolder(str(train_root), transform=train_tf)
    test_set = datasets.ImageFolder(str(test_root), transform=test_tf)
    return (DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=workers),
            DataLoader(test_set, batch_size=256, num_workers=workers))


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    right = total = 0
    for x, y in loader:
        right += int((model(x).argmax(1) == y).sum())
        total += len(y)
    model.train()
    return right / total


def run_seed(epochs: int, batch_size: int, workers: int) -> list[dict[str, float]]:
    torch.manual_seed(0)
    train_loader, test_loader = loaders(batch_size, workers)
    model = create_model("simple_cnn", 10, in_chans=1, dropout=0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    rows, clock = [], 0.0
    for epoch in range(epochs):
        began = time.perf_counter()
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
        clock += time.perf_counter() - began
        rows.append({"epoch": epoch + 1, "train_s": round(clock, 1),
                     "test_acc": round(accuracy(model, test_loader), 4)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--recipe-curve", type=Path,
                        default=RESULTS / "fashion_mnist-fashion_mnist.json")
    parser.add_argument("--reuse-seed", action="store_true",
                        help="compare with the seed curve already in seed_baseline.json")
    args = parser.parse_args()
    console = Console()
    saved = RESULTS / "seed_baseline.json"
    if args.reuse_seed and saved.exists():
        seed_rows = json.loads(saved.read_text())["seed"]
    else:
        seed_rows = run_seed(args.epochs, args.batch_size, args.workers)
    target, seed_time = seed_rows[-1]["test_acc"], seed_rows[-1]["train_s"]
    result = {"seed": seed_rows, "seed_final_acc": target, "seed_train_s": seed_time,
              "recipe_curve": args.recipe_curve.name}
    table = Table(title="time to the seed's final test accuracy", title_justify="left")
    for column in ("trainer", "test acc", "time", "speed-up"):
        table.add_column(column, justify="right")
    table.add_row("seed style (SimpleCNN, Adam, per-sample transforms)", f"{target:.4f}",
                  f"{seed_time / 60:.1f} min", "1.0×")
    if args.recipe_curve.exists():
        curve = json.loads(args.recipe_curve.read_text())["curve"]
        reached = next((r for r in curve if r["test_acc_tta"] >= target), None)
        if reached:
            speedup = seed_time / reached["train_s"]
            result.update({"visiondeck_epoch": reached["epoch"],
                           "visiondeck_train_s": reached["train_s"], "speedup": speedup})
            table.add_row(f"VisionDeck {args.recipe_curve.name}", f"{reached['test_acc_tta']:.4f}",
                          f"{reached['train_s'] / 60:.1f} min", f"{speedup:.1f}×")
        else:
            table.add_row("VisionDeck", "never reached", "-", "-")
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "seed_baseline.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
