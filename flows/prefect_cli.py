"""``nucleate prefect up | down | status``: the local Prefect server (see :mod:`flows.prefect_server`).

``up`` and ``status`` print the server and UI lines on stderr and the ``export PREFECT_API_URL=...`` line on stdout,
so ``eval "$(nucleate prefect up)"`` points this shell's Prefect clients (``nucleate serve``, ``prefect deploy``,
``prefect worker start``) at it.
"""

from __future__ import annotations

from pathlib import Path

import typer

from flows.prefect_server import DEFAULT_HOME, PrefectServer, PrefectServerError

__all__ = ["prefect_app"]

prefect_app = typer.Typer(no_args_is_help=True, help="The local Prefect server that schedules the round flows.")

_HOME = typer.Option(DEFAULT_HOME, "--home", envvar="PREFECT_HOME",
                     help="PREFECT_HOME of the server: its SQLite database, state and log (git-ignored).")


def _running(state: dict, home: Path, what: str) -> None:
    typer.echo(f"Prefect server {what} at {state['url']} (pid {state['pid']}; PREFECT_HOME {home}; "
               f"log {home / 'server.log'})", err=True)
    typer.echo(f"UI: {state['url']}", err=True)
    typer.echo(f"export PREFECT_API_URL={state['api_url']}")


@prefect_app.command("up")
def up(
    home: Path = _HOME,
    port: int = typer.Option(None, help="Port on 127.0.0.1 (default: the previous one if free, else 4200 if free, "
                                        "else any free one)."),
    timeout: float = typer.Option(120.0, help="Seconds to wait for the server to answer /api/health."),
) -> None:
    """Start the local Prefect server (`prefect server start` on 127.0.0.1, SQLite under PREFECT_HOME) in the
    background, or find it running; prints the UI URL and the PREFECT_API_URL to export."""
    from tasks._stage import stage_errors

    server = PrefectServer(home)
    with stage_errors(PrefectServerError):
        state = server.up(port=port, timeout=timeout, log=lambda line: typer.echo(line, err=True))
    _running(state, home, "running")


@prefect_app.command("down")
def down(home: Path = _HOME) -> None:
    """Stop the local Prefect server (its database stays in PREFECT_HOME)."""
    stopped = PrefectServer(home).down()
    typer.echo("Prefect server stopped" if stopped else f"Prefect server was not running (PREFECT_HOME {home})")


@prefect_app.command("status")
def status(home: Path = _HOME) -> None:
    """Is the local Prefect server up? Exit 1 when it is not running or not answering."""
    server = PrefectServer(home)
    state = server.state()
    if state is None:
        typer.echo(f"Prefect server is not running (PREFECT_HOME {home}); start it with `nucleate prefect up`",
                   err=True)
        raise typer.Exit(1)
    if not server.healthy():
        typer.echo(f"Prefect server (pid {state['pid']}) at {state['url']} does not answer /api/health; "
                   f"see {home / 'server.log'}", err=True)
        raise typer.Exit(1)
    _running(state, home, "healthy")
