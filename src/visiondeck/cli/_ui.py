"""Shared terminal output helpers (rich), imported only by commands that print."""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)

#: exit code of a check that ran fine but found problems in the data
EXIT_ISSUES = 3


def print_error(exc: Exception) -> None:
    message = getattr(exc, "message", str(exc))
    hint = getattr(exc, "hint", None)
    from rich.markup import escape  # a hint like pip install 'visiondeck[ray]' is not markup

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    if hint:
        err_console.print(f"[yellow]hint:[/] {escape(hint)}", highlight=False)
