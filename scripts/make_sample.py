"""Regenerate VisionDeck's bundled sample from the official Fashion-MNIST training set.

The sample (src/visiondeck/data/sample/) is 400 images per class, 4,000 in all, drawn
without replacement by ``numpy.random.default_rng(0)`` class by class (classes in index
order), then sorted by their position in the official file. Three gzip IDX files are
written, byte-reproducibly (gzip mtime 0):

* ``sample-images-idx3-ubyte.gz``  uint8 (4000, 28, 28)
* ``sample-labels-idx1-ubyte.gz``  uint8 (4000,)
* ``sample-indices-idx1-int.gz``   int32 (4000,): each image's index in the official
  train-images-idx3-ubyte, so anyone can check the sample against the source.

The source files are located like `load_fashion_mnist` does (Debian's
``dataset-fashion-mnist`` package, $VISIONDECK_FASHION_MNIST, the cache, or ``--root``)
and digest-verified before use.

Usage (from the repository root)::

    PYTHONPATH=src python scripts/make_sample.py            # rewrite the committed files
    PYTHONPATH=src python scripts/make_sample.py --check    # exit 1 if they would change
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from visiondeck.data.builtin import SAMPLE_FILES, load_fashion_mnist
from visiondeck.data.idx import write_idx

SEED = 0
PER_CLASS = 400
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "visiondeck" / "data" / "sample"


def select_indices(labels: np.ndarray, per_class: int = PER_CLASS, seed: int = SEED) -> np.ndarray:
    """Stratified draw; sorting keeps the sample in official order (classes interleaved)."""
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False)
        for c in range(int(labels.max()) + 1)
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int32)


def write_sample(out_dir: Path, root: str | None = None) -> list[Path]:
    """Write the three sample files into `out_dir` and return their paths."""
    train = load_fashion_mnist("train", root=root, verify=True)
    indices = select_indices(train.labels)
    arrays = (train.images[indices], train.labels[indices].astype(np.uint8), indices)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [write_idx(a, out_dir / name) for a, name in zip(arrays, SAMPLE_FILES, strict=True)]


def _same_bytes(a: Path, b: Path) -> bool:
    return b.is_file() and a.read_bytes() == b.read_bytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="folder holding the four Fashion-MNIST files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument(
        "--check", action="store_true", help="compare with --out instead of writing it"
    )
    args = parser.parse_args(argv)
    if not args.check:
        for path in write_sample(args.out, args.root):
            print(f"wrote {path} ({path.stat().st_size:,} bytes)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = write_sample(Path(tmp), args.root)
        stale = [p.name for p in fresh if not _same_bytes(p, args.out / p.name)]
    for name in stale:
        print(f"differs: {args.out / name}", file=sys.stderr)
    print("sample is up to date" if not stale else "sample is stale; rerun without --check")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
