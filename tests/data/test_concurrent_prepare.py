"""Several processes preparing the same data at once (torchrun ranks, two pipelines).

Each writes catalog, report, split and decoded cache under a temporary name of its own and
renames it into place; none may fail on another's rename, and what is left is whole.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from tests.factories import write_learnable
from visiondeck.config import DataConfig


def _prepare(source: str, prepared: str, rounds: int) -> None:
    from visiondeck.data.prepare import prepare_split

    config = DataConfig(source=source, prepared=prepared, image_size=16,
                        val_fraction=0.25, test_fraction=0.25)
    for _ in range(rounds):
        prepare_split(config, progress=False, force=False)


def test_four_processes_prepare_the_same_folder_at_once(tmp_path: Path) -> None:
    data = write_learnable(tmp_path / "images")
    prepared = tmp_path / "prepared"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_prepare, args=(str(data), str(prepared), 5))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    split = json.loads(next(prepared.rglob("split.json")).read_text())
    counts = split["counts"]  # subset -> class -> files
    assert sum(sum(counts[s].values()) for s in ("train", "val", "test")) == 72
    assert not list(prepared.rglob("*.tmp"))  # no temporary file left behind
