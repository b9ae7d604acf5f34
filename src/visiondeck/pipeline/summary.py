"""The table printed at the end of a pipeline: what each step did, how long, what it made."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table

    from visiondeck.pipeline.runner import PipelineResult

__all__ = ["STATUS_STYLE", "summary_table"]

STATUS_STYLE = {
    "ran": "green", "skipped": "cyan", "failed": "bold red", "refused": "yellow",
    "off": "dim", "not run": "dim", "not selected": "dim", "running": "blue",
}


def summary_table(result: PipelineResult) -> Table:
    """One row per step: step, status, duration, key output (accuracy, Bundle, version)."""
    from rich.table import Table

    table = Table(title=f"pipeline {result.recipe.name} ({result.duration_s:.1f} s; state: "
                  f"{result.state_file})", title_justify="left")
    table.add_column("step")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("result", overflow="fold")
    for report in result.steps:
        style = STATUS_STYLE.get(report.status, "")
        shown = "" if report.status in ("not run",) else report.key
        duration = f"{report.duration_s:.1f} s" if report.status not in (
            "not run", "not selected") else ""
        table.add_row(report.name, f"[{style}]{report.status}[/]", duration, shown)
    return table
