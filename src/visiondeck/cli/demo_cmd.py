"""`visiondeck demo`: the main job on the embedded default, end to end as far as it exists."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# The embedded default recipe: the bundled 4,000-image Fashion-MNIST sample, a small
# ResNet that trains in about a minute on two CPU cores.
DEMO_OVERRIDES = (
    "name=demo", "data.image_size=28", "data.channels=1", "data.mean=[0.286]",
    "data.std=[0.353]", "data.augment=light", "data.cache=memory",
    "model.name=resnet_small_t", "model.dropout=0.0",
    "train.epochs=6", "train.batch_size=128", "train.optimizer=sgd", "train.lr=0.1",
    "train.weight_decay=0.0005", "train.label_smoothing=0.1", "train.min_val_accuracy=0.75",
)


def demo(
    workdir: Annotated[Path, typer.Option(help="where the demo writes everything")]
    = Path("demo"),
    epochs: Annotated[int, typer.Option(help="training epochs")] = 6,
) -> None:
    """Materialise the bundled sample, check and split it, and train a model on it."""
    from visiondeck.cli._ui import console
    from visiondeck.cli.data_cmd import _print_report
    from visiondeck.cli.train_cmd import _report
    from visiondeck.config import load_recipe
    from visiondeck.data.materialize import materialize
    from visiondeck.data.prepare import prepare_split

    images = workdir / "data" / "sample"
    console.rule("1/4 data: the bundled Fashion-MNIST sample as class folders")
    result = materialize("sample", images, progress=True)
    console.print(f"{result.files_written + result.skipped_existing} images in {images}")

    recipe = load_recipe(None, [
        *DEMO_OVERRIDES, f"data.source={images}", f"data.prepared={workdir / 'prepared'}",
        f"output_dir={workdir / 'runs'}", f"train.epochs={epochs}",
    ])
    console.rule("2/4 check: decode and validate every file")
    outcome = prepare_split(recipe.data, progress=True, force=True)
    _print_report(outcome.check.report, reused=outcome.check.reused)

    console.rule("3/4 split: stratified train/val/test, saved with content hashes")
    counts = outcome.split.counts()
    console.print(
        f"split {outcome.split.id}: "
        + ", ".join(f"{s} {sum(counts[s].values())}" for s in ("train", "val", "test"))
        + f" → {outcome.check.prepared / 'split.csv'}"
    )

    console.rule(f"4/4 train: {recipe.model.name}, {recipe.train.epochs} epochs")
    from visiondeck.train.runner import train

    run = train(recipe, progress=True)
    _report(run)
    console.print(f"[green]demo finished[/]: the trained model is in {run.run_dir / 'model'}")
