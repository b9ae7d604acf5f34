"""`visiondeck explain RUN_OR_BUNDLE IMAGE...`: Grad-CAM overlays as PNG files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def explain(
    source: Annotated[str, typer.Argument(help="run folder, Bundle folder or models:/NAME@ALIAS")],
    images: Annotated[list[Path], typer.Argument(help="image files")],
    method: Annotated[str, typer.Option(help="gradcam, gradcam++, hirescam, xgradcam, "
                                        "layercam, eigencam, eigengradcam, scorecam")
                      ] = "gradcam",
    layer: Annotated[str | None, typer.Option(help="dotted module name (default: the last "
                                              "convolutional block)")] = None,
    class_name: Annotated[str | None, typer.Option("--class", help="class to explain "
                                                   "(default: the predicted one)")] = None,
    alpha: Annotated[float, typer.Option(help="heat-map opacity 0..1")] = 0.5,
    out: Annotated[Path, typer.Option(help="folder for the overlays")] = Path("explanations"),
) -> None:
    """Where the model looked: one input | overlay PNG per image."""
    from rich.table import Table

    from visiondeck.cli._ui import console
    from visiondeck.explain import explain_files, load_explainable

    loaded = load_explainable(source)
    results = explain_files(loaded, images, out, method=method, target_layer=layer,
                            class_name=class_name, alpha=alpha)
    table = Table(title=f"{method} · {loaded.name}", title_justify="left")
    for column in ("image", "predicted", "explained", "layer", "overlay"):
        table.add_column(column)
    failed = 0
    for item in results:
        if item.explanation is None:
            failed += 1
            table.add_row(str(item.source), f"[red]{item.error}[/]", "", "", "")
            continue
        e = item.explanation
        table.add_row(str(item.source), loaded.classes[e.predicted_index],
                      loaded.classes[e.class_index], e.target_layer_name, str(item.output))
    console.print(table)
    if failed:
        raise typer.Exit(4)
