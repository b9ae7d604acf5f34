"""`visiondeck demo`: the whole pipeline on the bundled sample, with nothing to set up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

#: what the demo fixes itself; everything else is chosen from the data (`train.auto`)
DEMO_OVERRIDES = ("name=demo", "data.cache=memory", "train.min_val_accuracy=0.75")
#: the demo's time budget: probe, training and validation on the 4,000-image sample
DEMO_TIME = "1m"


def demo(
    workdir: Annotated[Path, typer.Option(help="where the demo writes everything")]
    = Path("demo"),
    time_budget: Annotated[str, typer.Option("--time", help="training time budget")
                           ] = DEMO_TIME,
    epochs: Annotated[int | None, typer.Option(help="fixed epochs instead of the time "
                                               "budget")] = None,
    serve: Annotated[bool, typer.Option("--serve", help="then serve the Bundle on "
                                        "http://127.0.0.1:PORT until Ctrl-C")] = False,
    port: Annotated[int, typer.Option(help="port for --serve")] = 8000,
) -> None:
    """The whole flow on the bundled sample: data → train → evaluate → export (→ serve).

    Materialises the sample, chooses the recipe from the data (`visiondeck pipeline SOURCE`),
    runs the pipeline (check → split → train within --time → evaluate → export (+int8) →
    register → promote) and, with --serve, serves the Bundle. Run it again: unchanged steps
    are skipped.
    """
    from visiondeck.cli._ui import console
    from visiondeck.cli.pipeline_cmd import run_and_report
    from visiondeck.data.materialize import materialize

    images = workdir / "data" / "sample"
    console.rule("data: the bundled Fashion-MNIST sample as class folders", align="left")
    result = materialize("sample", images, progress=True)
    console.print(f"{result.files_written + result.skipped_existing} images in {images}")

    overrides = [*DEMO_OVERRIDES, f"data.prepared={workdir / 'prepared'}",
                 f"output_dir={workdir / 'runs'}"]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    done = run_and_report(None, overrides, source=str(images),
                          time_budget=None if epochs is not None else time_budget)
    bundle = done.bundle
    console.print(f"[green]demo finished[/]: the model is in {done.run_dir / 'model'}, its "
                  f"Bundle in {bundle}, the report in {done.run_dir / 'evaluation'}")
    if not serve:
        console.print(f"serve it: [bold]visiondeck serve {bundle}[/] (or `visiondeck demo "
                      "--serve`)", highlight=False)
        return
    from visiondeck.cli.serve_cmd import serve as serve_bundle

    serve_bundle(str(bundle), port=port)
