"""What every stage's command line shares: one-line errors and running a command on its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

import typer

__all__ = ["fail", "run_alone"]


def fail(error: object) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with status 1 (no traceback)."""
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(1)


def run_alone(command: Callable[..., None], argv: list[str] | None = None) -> None:
    """Run one stage's Typer ``command`` as a program (``python -m tasks.<stage> ...``)."""
    app = typer.Typer(add_completion=False)
    app.command()(command)
    app(argv)
