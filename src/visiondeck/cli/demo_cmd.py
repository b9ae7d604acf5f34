"""`visiondeck demo`: the whole pipeline on the bundled sample, with nothing to set up."""

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
    serve: Annotated[bool, typer.Option("--serve", help="then serve the Bundle on "
                                        "http://127.0.0.1:PORT until Ctrl-C")] = False,
    port: Annotated[int, typer.Option(help="port for --serve")] = 8000,
) -> None:
    """The whole flow on the bundled sample: data → train → evaluate → export (→ serve).

    Materialises the sample, runs the pipeline (check → split → train → evaluate → export
    (+int8) → register → promote) and, with --serve, serves the Bundle. Run it again:
    unchanged steps are skipped.
    """
    from visiondeck.cli._ui import console
    from visiondeck.cli.pipeline_cmd import run_and_report
    from visiondeck.data.materialize import materialize

    images = workdir / "data" / "sample"
    console.rule("data: the bundled Fashion-MNIST sample as class folders", align="left")
    result = materialize("sample", images, progress=True)
    console.print(f"{result.files_written + result.skipped_existing} images in {images}")

    overrides = [*DEMO_OVERRIDES, f"data.source={images}",
                 f"data.prepared={workdir / 'prepared'}", f"output_dir={workdir / 'runs'}",
                 f"train.epochs={epochs}"]
    done = run_and_report(None, overrides)
    bundle = done.bundle
    console.print(f"[green]demo finished[/]: the model is in {done.run_dir / 'model'}, its "
                  f"Bundle in {bundle}, the report in {done.run_dir / 'evaluation'}")
    if not serve:
        console.print(f"serve it: [bold]visiondeck serve {bundle}[/] (or `visiondeck demo "
                      "--serve`)", highlight=False)
        return
    from visiondeck.cli.serve_cmd import serve as serve_bundle

    serve_bundle(str(bundle), port=port)
