"""Batch prediction over a large folder keeps memory flat (`visiondeck predict -o FILE`).

Peak Python memory (tracemalloc: numpy arrays included) of the predict command is measured
on 200 and on 2,000 tiny images; streaming means ten times the files costs about the same
memory. The control shows the measurement can see a per-file cost: a consumer that keeps
every result (a plain `list(...)`) grows by far more than the allowance.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
import typer

from tests.deploy.conftest import colour_png

ALLOWANCE = 200 * 1024  # bytes of growth allowed for 10× the files (the folder listings)


def _folder(root: Path, count: int) -> Path:
    for i in range(count):
        colour = ("red", "green", "blue")[i % 3]
        target = root / colour / f"{i:06d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(colour_png(colour, size=8, seed=i))
    (root / "README.txt").write_text("not a picture: skipped while walking\n")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("batch")
    return _folder(base / "small", 200), _folder(base / "large", 2000)


def _peak(run: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _command(bundle: Path, folder: Path, out: Path, workers: int) -> Callable[[], None]:
    from visiondeck.cli.predict_cmd import predict

    def run() -> None:
        try:
            predict(str(bundle), [str(folder)], top_k=3, output_format="table", output=out,
                    variant="fp32", batch_size=64, workers=workers, gradcam=None)
        except typer.Exit as exc:  # pragma: no cover - every file here is a good image
            raise AssertionError(f"predict exited {exc.exit_code}") from None

    return run


@pytest.mark.parametrize("workers", [1, 2])
def test_memory_stays_flat_from_200_to_2000_images(colour_bundle: Path, folders, tmp_path: Path,
                                                  workers: int) -> None:
    small, large = folders
    out = tmp_path / "predictions.jsonl"  # the format follows the suffix
    _command(colour_bundle, small, out, workers)()  # imports and first allocations aside
    peak_small = _peak(_command(colour_bundle, small, out, workers))
    peak_large = _peak(_command(colour_bundle, large, out, workers))
    assert peak_large < peak_small + ALLOWANCE, (peak_small, peak_large)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2000  # written as they came, every one of them
    assert all(Path(r["source"]).parent.name == r["label"] for r in rows)


def test_the_measurement_sees_results_that_are_kept(colour_bundle: Path, folders) -> None:
    from visiondeck.export.predictor import Predictor
    from visiondeck.locations import iter_inputs

    predictor = Predictor(colour_bundle, top_k=3)

    def keep(folder: Path) -> Callable[[], object]:
        return lambda: list(predictor.predict_files(
            (path for path, _ in iter_inputs([str(folder)])), workers=1))

    small, large = folders
    keep(small)()
    grown = _peak(keep(large)) - _peak(keep(small))
    assert grown > 3 * ALLOWANCE, grown  # 1,800 more results held (~1 MB): past the allowance


def test_csv_output_file_and_a_single_walk(colour_bundle: Path, folders, tmp_path: Path) -> None:
    from visiondeck.locations import iter_inputs

    small, _ = folders
    found = list(iter_inputs([str(small)]))
    assert len(found) == 201 and all(walked for _, walked in found)  # README.txt included
    out = tmp_path / "p.csv"
    _command(colour_bundle, small, out, 1)()
    lines = out.read_text().splitlines()
    assert lines[0].startswith("source,label,probability") and len(lines) == 201
