"""`visiondeck demo`: the main job on the embedded default, end to end as far as it exists."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    workdir: Annotated[Path, typer.Option(help="where the demo writes everything")]
    = Path("demo"),
) -> None:
    """Materialise the bundled sample, check it and split it."""
    from visiondeck.cli._ui import console
    from visiondeck.cli.data_cmd import _print_report
    from visiondeck.config import DataConfig
    from visiondeck.data.materialize import materialize
    from visiondeck.data.prepare import prepare_split

    images = workdir / "data" / "sample"
    console.rule("1/3 data: the bundled Fashion-MNIST sample as class folders")
    result = materialize("sample", images, progress=True)
    console.print(f"{result.files_written + result.skipped_existing} images in {images}")

    console.rule("2/3 check: decode and validate every file")
    cfg = DataConfig(source=str(images), image_size=28, channels=1)
    outcome = prepare_split(cfg, prepared=workdir / "prepared", progress=True, force=True)
    _print_report(outcome.check.report, reused=outcome.check.reused)

    console.rule("3/3 split: stratified train/val/test, saved with content hashes")
    counts = outcome.split.counts()
    console.print(
        f"split {outcome.split.id}: "
        + ", ".join(f"{s} {sum(counts[s].values())}" for s in ("train", "val", "test"))
        + f" → {outcome.check.prepared / 'split.csv'}"
    )
    console.print("[green]demo finished[/] (training, evaluation, export and serving arrive "
                  "with the next stages)")
