"""`visiondeck config ...`: show resolved recipes and the commented defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Inspect recipes.", no_args_is_help=True)


@app.command()
def show(
    recipe: Annotated[Path | None, typer.Argument(help="recipe YAML (defaults if omitted)")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
) -> None:
    """Print the resolved recipe: defaults < YAML < key=value overrides."""
    from visiondeck.config import load_recipe, recipe_to_yaml

    # the whole argument, not its last path part: `data.source=some/dir` is an override
    if recipe is not None and "=" in str(recipe) and not recipe.exists():
        overrides = [str(recipe), *(overrides or [])]
        recipe = None
    typer.echo(recipe_to_yaml(load_recipe(recipe, overrides or [])), nl=False)


@app.command()
def defaults() -> None:
    """Print every recipe key with its default, type and meaning."""
    from visiondeck.config import render_defaults

    typer.echo(render_defaults(), nl=False)
