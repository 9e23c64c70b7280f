"""``nucleate round ...``: run the round flows (flows.rounds) by hand, see where a project's round stands.

    nucleate round open      ingest -> teacher -> select -> pre-annotations -> push (then annotate in Label Studio)
    nucleate round close     pull -> points -> pseudomasks -> train -> predict -> evaluate -> report -> tag round-NNN
    nucleate round watch     what the scheduled watcher does: close the round when params `rounds` says it is done
    nucleate round status    open round, Label Studio progress, closed rounds
    nucleate round checkout N   git checkout round-NNN + dvc checkout (that round's model, points, metrics)

Each runs as a Prefect flow run (on the server in PREFECT_API_URL, else a temporary local one), so it shows
in the UI like the scheduled ones. Expected failures print one ``error:`` line and exit 1.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import typer

__all__ = ["round_app"]

round_app = typer.Typer(no_args_is_help=True, help="Annotation rounds: open, close, watch, status, checkout.")

_PROJECT = typer.Option(Path("."), "--project", help="Project folder (params.yaml, dvc.yaml, storage/).")


class _QuietExpected(logging.Filter):
    """Drop the traceback Prefect logs for an expected failure (the CLI prints its one line instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], _expected()):
            record.exc_info = None
            record.exc_text = None
        return True


def _expected() -> tuple[type[BaseException], ...]:
    from flows.lineage import LineageError
    from flows.ls_connection import LabelStudioError
    from flows.ls_server import ServerError
    from flows.rounds import InjectedFault, RoundError
    from tasks._stage import EXPECTED_ERRORS

    return (RoundError, LineageError, LabelStudioError, ServerError, InjectedFault, *EXPECTED_ERRORS)


@contextlib.contextmanager
def _flow_errors() -> Iterator[None]:
    from tasks._stage import fail, setup_logging

    setup_logging()
    quiet = _QuietExpected()
    loggers = [logging.getLogger(n) for n in ("prefect.flow_runs", "prefect.task_runs")]
    for lg in loggers:
        lg.addFilter(quiet)
    try:
        yield
    except _expected() as exc:
        fail(exc)
    finally:
        for lg in loggers:
            lg.removeFilter(quiet)


@round_app.command("open")
def open_command(project: Path = _PROJECT) -> None:
    """Open the next round: select images, pre-annotate them with the student, push them to Label Studio."""
    from flows.rounds import Project, open_round

    with _flow_errors():
        Project.load(project)  # a bad folder or params file: one line before any flow starts
        result = open_round(str(project), wait=False)
    typer.echo(f"round {result['round']} is open: {result['tasks']} task(s) at {result['url']}")
    typer.echo("annotate them, then `nucleate round close` (or let `nucleate serve`'s watcher close it)")


@round_app.command("close")
def close_command(
    project: Path = _PROJECT,
    round: int = typer.Option(None, "--round", help="Round to close (default: the open one)."),  # noqa: A002
) -> None:
    """Close the round: pull the export, reproduce points -> ... -> evaluate, report, commit + tag round-NNN."""
    from flows.rounds import Project, close_round

    with _flow_errors():
        Project.load(project)  # a bad folder or params file: one line before any flow starts
        result = close_round(str(project), round)
    test = result.get("test")
    scores = f"; test Dice {test['dice']:.3f}, AJI {test['aji']:.3f}, PQ {test['pq']:.3f}" if test else ""
    typer.echo(f"round {result['round']} closed (tag round-{result['round']:03d}){scores}")


@round_app.command("watch")
def watch_command(project: Path = _PROJECT) -> None:
    """Check the open round once, as the scheduled watcher does (close it when params `rounds` says so)."""
    from flows.rounds import Project, watch

    with _flow_errors():
        Project.load(project)  # a bad folder or params file: one line before any flow starts
        result = watch(str(project))
    typer.echo(f"watch: {result['action']}: {result['reason']}")


@round_app.command("status")
def status_command(project: Path = _PROJECT) -> None:
    """The open round (Label Studio progress) and the closed rounds (git tags)."""
    from flows import lineage
    from flows.rounds import Project, close_decision, read_ledger

    with _flow_errors():
        proj = Project.load(project)
        closed = lineage.closed_rounds(proj.root) if lineage.is_repo(proj.root) else []
        typer.echo(f"closed rounds: {', '.join(lineage.round_tag(r) for r in closed) or 'none'}")
        ledger = read_ledger(proj.layout)
        if ledger is None:
            typer.echo("no round is open; open one with `nucleate round open`")
            return
        r = int(ledger["round"])
        line = f"round {r}: {ledger.get('status')}"
        if ledger.get("status") == "pushed":
            with proj.adapter() as adapter:
                progress = adapter.progress(adapter.find_project(proj.params.labelstudio.project_title), r)
            ready, why = close_decision(progress, ledger.get("pushed_at"), proj.params.rounds)
            line += f" {ledger.get('pushed_at')}; {why}" + ("; ready to close" if ready else "")
        typer.echo(line)
        typer.echo(json.dumps({k: v for k, v in ledger.items() if k != "images"}))


@round_app.command("checkout")
def checkout_command(round: int = typer.Argument(..., help="Round number."), project: Path = _PROJECT) -> None:  # noqa: A002
    """`git checkout round-NNN` + `dvc checkout`: that round's model, points, masks and metrics in the workspace."""
    from flows import lineage

    with _flow_errors():
        lineage.checkout_round(Path(project), round)
    typer.echo(f"workspace at {lineage.round_tag(round)} (detached HEAD); `git checkout -` + `dvc checkout` to go back")
