"""Active learning on Fashion-MNIST: does labelling the most uncertain images first pay?

From a small random seed set of labelled training images, each round trains a model from
scratch, scores the unlabelled pool, and "labels" (takes the true label of) the next batch
of images chosen by one strategy:

- `random`  — a uniform draw (the baseline);
- `margin`  — the smallest gap between the top two class probabilities;
- `entropy` — the largest entropy of the class probabilities;

the same uncertainty scores the web page's Review queue orders predictions by. Accuracy on
the official 10,000 test images is recorded after every round, for several seeds, and
plotted as accuracy against the number of labels (mean ± std over seeds).

The model is deliberately small (a 784-256-10 MLP on raw pixels, trained from scratch each
round) so the whole benchmark runs in minutes on a shared 2-core machine; it is the ranking
that is measured, not the network. The script also prints why a strategy wins or loses:
the class mix of the images each one asked for, and how many of them the round's model had
wrong (the "informativeness" a human labeller would feel).

    python benchmarks/bench_active_learning.py                 # 3 seeds, 100 + 10 × 100 labels
    python benchmarks/bench_active_learning.py --seeds 5 --rounds 15 --batch 50
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("random", "margin", "entropy")


def uncertainty(probs: np.ndarray, strategy: str) -> np.ndarray:
    """Higher = label it sooner."""
    if strategy == "margin":
        top = np.sort(probs, axis=1)
        return -(top[:, -1] - top[:, -2])
    if strategy == "entropy":
        return -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=1)
    raise ValueError(strategy)


def train_mlp(x: np.ndarray, y: np.ndarray, *, seed: int, epochs: int, min_steps: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], 256), nn.ReLU(), nn.Linear(256, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    batch = 64
    steps_per_epoch = max(1, -(-len(x) // batch))
    epochs = max(epochs, -(-min_steps // steps_per_epoch))
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(xs[idx]), ys[idx]).backward()
            optimiser.step()
    model.eval()
    return model


def predict(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()


def run(strategy: str, seed: int, pool_x, pool_y, test_x, test_y, args) -> dict:
    rng = np.random.default_rng(seed)
    labelled = list(rng.choice(len(pool_x), size=args.seed_size, replace=False))
    curve, asked = [], []
    for round_ in range(args.rounds + 1):
        model = train_mlp(
            pool_x[labelled],
            pool_y[labelled],
            seed=seed * 100 + round_,
            epochs=args.epochs,
            min_steps=args.min_steps,
        )
        accuracy = float((predict(model, test_x).argmax(1) == test_y).mean())
        curve.append({"labels": len(labelled), "accuracy": accuracy})
        if round_ == args.rounds:
            break
        mask = np.ones(len(pool_x), dtype=bool)
        mask[labelled] = False
        candidates = np.flatnonzero(mask)
        probs = predict(model, pool_x[candidates])
        if strategy == "random":
            chosen = rng.choice(candidates, size=args.batch, replace=False)
        else:
            score = uncertainty(probs, strategy)
            chosen = candidates[np.argsort(-score, kind="stable")[: args.batch]]
        wrong = float((predict(model, pool_x[chosen]).argmax(1) != pool_y[chosen]).mean())
        asked.append(
            {"classes": np.bincount(pool_y[chosen], minlength=10).tolist(), "model_wrong": wrong}
        )
        labelled.extend(int(i) for i in chosen)
    return {"strategy": strategy, "seed": seed, "curve": curve, "asked": asked}


def plot(results: list[dict], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for strategy in STRATEGIES:
        runs = [r for r in results if r["strategy"] == strategy]
        labels = [p["labels"] for p in runs[0]["curve"]]
        acc = np.array([[p["accuracy"] for p in r["curve"]] for r in runs]) * 100
        mean, std = acc.mean(0), acc.std(0)
        ax.plot(labels, mean, marker="o", ms=3, label=strategy)
        ax.fill_between(labels, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("labelled training images")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"Fashion-MNIST active learning ({len(results) // len(STRATEGIES)} seeds, "
        f"pool {args.pool:,}, MLP)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed-size", type=int, default=100, help="labelled images at start")
    parser.add_argument("--batch", type=int, default=100, help="labels added per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--pool", type=int, default=20000, help="unlabelled pool size")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--min-steps", type=int, default=300)
    parser.add_argument(
        "--plot", default=str(ROOT / "docs" / "examples" / "active_learning_fashion_mnist.png")
    )
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "active_learning.json")
    )
    args = parser.parse_args()

    from visiondeck.data.builtin import load_fashion_mnist

    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    pick = np.random.default_rng(12345).choice(len(train), size=args.pool, replace=False)
    pool_x = (train.images[pick].reshape(args.pool, -1) / 255.0).astype(np.float32)
    pool_y = train.labels[pick]
    test_x = (test.images.reshape(len(test), -1) / 255.0).astype(np.float32)
    test_y = test.labels
    began = time.perf_counter()
    load = os.getloadavg()
    results = []
    for seed in range(args.seeds):
        for strategy in STRATEGIES:
            results.append(run(strategy, seed, pool_x, pool_y, test_x, test_y, args))
            last = results[-1]["curve"][-1]
            print(
                f"seed {seed} {strategy:8s} {last['labels']} labels → "
                f"{100 * last['accuracy']:.2f} %",
                flush=True,
            )
    elapsed = time.perf_counter() - began

    print(f"\nmean test accuracy (%) over {args.seeds} seeds by labels:")
    labels = [p["labels"] for p in results[0]["curve"]]
    print("labels   " + "".join(f"{s:>10s}" for s in STRATEGIES))
    summary = {}
    for k, n in enumerate(labels):
        row = {
            s: float(np.mean([r["curve"][k]["accuracy"] for r in results if r["strategy"] == s]))
            for s in STRATEGIES
        }
        summary[n] = row
        print(f"{n:6d}   " + "".join(f"{100 * row[s]:10.2f}" for s in STRATEGIES))
    print("\nwhat each strategy asked for (all rounds, all seeds):")
    names = [
        "T-shirt",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Boot",
    ]
    why = {}
    for s in STRATEGIES:
        asked = [a for r in results if r["strategy"] == s for a in r["asked"]]
        classes = np.sum([a["classes"] for a in asked], axis=0)
        share = classes / classes.sum()
        wrong = float(np.mean([a["model_wrong"] for a in asked]))
        why[s] = {
            "class_share": dict(zip(names, share.round(3).tolist(), strict=True)),
            "model_wrong_on_asked": wrong,
        }
        mix = ", ".join(f"{n} {100 * v:.0f}%" for n, v in zip(names, share, strict=True))
        print(f"  {s:8s} round model wrong on {100 * wrong:.0f}% of them; classes: {mix}")
    plot(results, Path(args.plot), args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "elapsed_s": round(elapsed, 1),
                "loadavg_start": load,
                "summary": summary,
                "why": why,
                "runs": results,
            },
            indent=1,
        )
    )
    print(
        f"\n{elapsed:.0f} s (load average at start {load[0]:.1f} on {os.cpu_count()} CPUs);"
        f" plot {args.plot}"
    )


if __name__ == "__main__":
    main()
