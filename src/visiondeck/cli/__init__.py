"""The `visiondeck` command line: one sub-command per stage, thin and lazily imported.

Only typer is imported here; each command imports what it needs when it runs, so
`visiondeck --help` answers at once and never pays for torch.
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from visiondeck.cli import (
    config_cmd,
    data_cmd,
    demo_cmd,
    export_cmd,
    pipeline_cmd,
    predict_cmd,
    registry_cmd,
    serve_cmd,
    train_cmd,
)


class _Group(TyperGroup):
    """Domain errors become a short message and their exit code, never a traceback."""

    def invoke(self, ctx: typer.Context):  # type: ignore[override]
        from visiondeck.errors import VisionDeckError

        try:
            return super().invoke(ctx)
        except VisionDeckError as exc:
            from visiondeck.cli._ui import print_error

            print_error(exc)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    cls=_Group,
    name="visiondeck",
    help="Local-first image classification: clean data, train, evaluate, explain, export, serve.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(data_cmd.app, name="data")
app.add_typer(config_cmd.app, name="config")
app.add_typer(train_cmd.models_app, name="models")
app.command("train")(train_cmd.train)
app.command("demo")(demo_cmd.demo)
app.command("pipeline")(pipeline_cmd.pipeline)
app.command("export")(export_cmd.export)
app.command("bench")(export_cmd.bench)
app.command("predict")(predict_cmd.predict)
app.command("serve")(serve_cmd.serve)
app.add_typer(serve_cmd.keys_app, name="keys")
app.add_typer(registry_cmd.runs_app, name="runs")
app.command("ui")(registry_cmd.ui)
app.command("register")(registry_cmd.register)
app.command("promote")(registry_cmd.promote)

from visiondeck.cli import evaluate_cmd, explain_cmd  # noqa: E402  (issue 4's commands)

app.command("evaluate")(evaluate_cmd.evaluate)
app.command("compare")(evaluate_cmd.compare)
app.command("ablate")(evaluate_cmd.ablate)
app.command("explain")(explain_cmd.explain)

from visiondeck.cli import monitor_cmd  # noqa: E402  (issue 9: drift monitoring)

app.add_typer(monitor_cmd.monitor_app, name="monitor")
app.command("retrain")(monitor_cmd.retrain)


@app.command()
def version() -> None:
    """Print the VisionDeck version."""
    from visiondeck import __version__

    typer.echo(__version__)


#: third-party chatter the command line hides: Lightning's start-up notes ("GPU available",
#: a cloud-logging advert, "`Trainer.fit` stopped") are INFO records of this logger, and
#: VisionDeck prints its own account of each run
QUIET_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


def quiet_libraries() -> None:
    """Keep the libraries' notes out of a user's terminal (warnings and errors still show)."""
    import logging
    import warnings

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # torch's own deprecation inside Lightning's pytree helper, on every fit: not the user's
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def main() -> None:
    """Console-script entry point."""
    quiet_libraries()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
