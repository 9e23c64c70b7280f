"""``nucleate ls ...`` and ``nucleate annotate-sim``: Label Studio from the command line.

    nucleate ls up | down | status          the local server (.ls-data, 127.0.0.1, free port, owner-only)
    nucleate ls push                        one task per selected image (+ pre-annotations) -> inflight table
    nucleate ls progress [--round N]        total / finished / skipped / open tasks
    nucleate ls pull [--round N]            raw exports -> storage/annotations/round-NNN/; clears finished
                                            tasks from the inflight table (`nucleate points` converts them)
    nucleate annotate-sim --points GT       a simulated annotator posts clicks through the API
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pyarrow as pa
import typer

from flows.ls_server import DEFAULT_DATA_DIR, LS_VERSION, LocalServer, ServerError, health
from nucleate.config import Params
from nucleate.io import LAYOUT, TableError, read_table
from tasks._stage import load_params_or_exit, stage_errors

__all__ = ["ls_app", "annotate_sim_command"]

ls_app = typer.Typer(no_args_is_help=True, help="Label Studio: local server, push, progress, pull.")

_DATA = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help="Local server data dir (git-ignored, owner-only).")
_PARAMS = typer.Option(Path("params.yaml"), "--params", help="params file (labels, labelstudio.*).")


def _adapter(params: Params, data_dir: Path):
    from flows.ls_client import Adapter
    from flows.ls_connection import resolve_connection

    conn = resolve_connection(data_dir)
    p = params.labelstudio
    return conn, Adapter(conn, retries=p.retries, backoff_s=p.retry_backoff_s, batch_size=p.batch_size)


@contextlib.contextmanager
def _ls_errors():
    """Expected failures (server, token, tables, missing files) -> one ``error:`` line and exit 1."""
    from flows.ls_connection import LabelStudioError
    from flows.s3 import S3Error

    with stage_errors(LabelStudioError, ServerError, S3Error):
        yield


@ls_app.command("up")
def up(
    data_dir: Path = _DATA,
    port: int = typer.Option(None, help="Port on 127.0.0.1 (default: the previous one if free, else any free one)."),
    workers: int = typer.Option(None, envvar="NUCLEATE_LS_WORKERS", min=1,
                                help="Server processes (uWSGI; more than 1 needs PostgreSQL). Default: 1 on SQLite, "
                                     "2 per CPU core on PostgreSQL."),
) -> None:
    """Start the local Label Studio server (first start: database + admin user + token, ~30-80 s).

    The data dir is made owner-only (0700 / 0600; the server runs with umask 077): its database holds every
    annotation and the admin's API token. Anything in it that other users could read is fixed, with a line.

    PostgreSQL: set Label Studio's DJANGO_DB=default, POSTGRE_HOST, POSTGRE_PORT, POSTGRE_NAME, POSTGRE_USER and
    POSTGRE_PASSWORD (the password only ever from the environment); it is checked before anything starts.
    """
    server = LocalServer(data_dir)
    with _ls_errors():
        state = server.up(port=port, log=lambda line: typer.echo(line, err=True), workers=workers)
    creds = server.credentials()
    typer.echo(f"Label Studio {LS_VERSION} running at {state['url']} (pid {state['pid']}; {_serving(state)})")
    typer.echo(f"log in as {creds['email']}; password and API token: {data_dir / 'credentials.json'}")


def _serving(state: dict) -> str:
    """``"sqlite, 1 process"`` / ``"postgresql HOST:PORT/NAME, 4 uWSGI workers"`` of a server state."""
    workers = state.get("workers", 1)
    how = f"{workers} uWSGI workers" if state.get("server") == "uwsgi" else "1 process"
    return f"{state.get('database', 'sqlite')}, {how}"


@ls_app.command("down")
def down(data_dir: Path = _DATA) -> None:
    """Stop the local Label Studio server (its data stays in the data dir)."""
    with _ls_errors():
        stopped = LocalServer(data_dir).down()
    typer.echo("Label Studio stopped" if stopped else "Label Studio was not running")


@ls_app.command("status")
def status(data_dir: Path = _DATA) -> None:
    """Is the server up? (NUCLEATE_LS_URL when set, else the local server.)"""
    url = os.environ.get("NUCLEATE_LS_URL")
    if url:
        from flows.ls_client import Adapter
        from flows.ls_connection import LabelStudioError, resolve_connection

        ok = health(url)
        line = f"NUCLEATE_LS_URL {url}: {'up' if ok else 'not answering /health'}"
        if ok:
            try:
                with Adapter(resolve_connection(data_dir), retries=0) as adapter:
                    me = adapter.whoami()
                line += f"; token accepted (user {me['email']})"
            except LabelStudioError as exc:
                line += f"; {exc}"
        typer.echo(line)
        if not ok:
            raise typer.Exit(1)
        return
    state = LocalServer(data_dir).state()
    if state is None:
        typer.echo(f"Label Studio is not running (data dir {data_dir}); start it with `nucleate ls up`")
        raise typer.Exit(1)
    ok = health(state["url"])
    typer.echo(f"Label Studio running at {state['url']} (pid {state['pid']}; {_serving(state)}): "
               f"{'healthy' if ok else 'not answering /health'}")
    if not ok:
        raise typer.Exit(1)


def _read_predictions(path: Path) -> pa.Table:
    """A predictions table: a points table, or any Parquet file with image_id, x, y, label[, score]."""
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: predictions table not found")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise TableError(f"{path}: not a readable Parquet file ({exc})") from None


@ls_app.command("push")
def push(
    selection: Path = typer.Option(LAYOUT.selection, help="Selection table of the round."),
    manifest: Path = typer.Option(LAYOUT.manifest, help="Manifest (image paths and sizes)."),
    inflight: Path = typer.Option(LAYOUT.inflight, help="In-flight table: every pushed image is recorded here."),
    round: int = typer.Option(None, help="Round to push (default: the selection's latest)."),  # noqa: A002
    predictions: Path = typer.Option(None, help="Points table of the student's predictions (pre-annotations)."),
    model_version: str = typer.Option(None, help="Name of the predictions' model (shown in Label Studio)."),
    params_path: Path = _PARAMS,
    data_dir: Path = _DATA,
) -> None:
    """Push the selected images as Label Studio tasks (idempotent) and record them in the in-flight table."""
    from flows.ls_push import push_round, selection_round

    params = load_params_or_exit(params_path)
    with _ls_errors():
        sel = read_table("selection", LAYOUT.require("selection", selection))
        r, image_ids = selection_round(sel, round)
        man = read_table("manifest", LAYOUT.require("manifest", manifest))
        preds = _read_predictions(predictions) if predictions else None
        conn, adapter = _adapter(params, data_dir)
        with adapter:
            report = push_round(adapter, params, man, image_ids, round=r, predictions=preds,
                                model_version=model_version, inflight=inflight)
    for line in report.lines():
        typer.echo(line)
    typer.echo(f"open {conn.url}/projects/{report.project_id}/data")


@ls_app.command("progress")
def progress(
    round: int = typer.Option(None, help="Round (default: all)."),  # noqa: A002
    params_path: Path = _PARAMS,
    data_dir: Path = _DATA,
) -> None:
    """Tasks of the round: total, finished (annotated or skipped), skipped, open."""
    params = load_params_or_exit(params_path)
    with _ls_errors():
        _, adapter = _adapter(params, data_dir)
        with adapter:
            project = adapter.find_project(params.labelstudio.project_title)
            p = adapter.progress(project, round)
    where = f"round {round}" if round is not None else "all rounds"
    typer.echo(f"{where}: {p['finished']}/{p['total']} finished ({p['annotated']} annotated, {p['skipped']} skipped), "
               f"{p['open']} open")
    typer.echo(json.dumps(p))


@ls_app.command("pull")
def pull(
    round: list[int] = typer.Option(None, "--round", help="Round(s) to pull (repeatable; default: all)."),  # noqa: A002
    annotations: Path = typer.Option(LAYOUT.annotations, help="Folder of round-NNN exports (owner-only)."),
    inflight: Path = typer.Option(LAYOUT.inflight, help="In-flight table: finished tasks are cleared from it."),
    params_path: Path = _PARAMS,
    data_dir: Path = _DATA,
) -> None:
    """Save each round's raw Label Studio export under ANNOTATIONS/round-NNN (converts nothing; then run
    `nucleate points`) and clear finished tasks from the in-flight table."""
    from flows.ls_pull import pull as pull_rounds

    params = load_params_or_exit(params_path)
    with _ls_errors():
        _, adapter = _adapter(params, data_dir)
        with adapter:
            project = adapter.find_project(params.labelstudio.project_title)
            report = pull_rounds(adapter, project, annotations=annotations, rounds=list(round) if round else None,
                                 inflight=inflight)
    for line in report.lines():
        typer.echo(line)


def annotate_sim_command(
    points: Path = typer.Option(..., help="Ground-truth points table (e.g. storage/sample/points.parquet)."),
    annotator: str = typer.Option("sim-1@nucleate.local", help="The simulated annotator's e-mail (user created)."),
    round: list[int] = typer.Option(None, help="Round(s) to annotate (default: all)."),  # noqa: A002
    limit: int = typer.Option(None, help="Annotate at most this many tasks."),
    params_path: Path = _PARAMS,
    data_dir: Path = _DATA,
) -> None:
    """Simulated annotator: post jittered ground-truth clicks (with misses and false clicks) to open tasks."""
    from flows.annotate_sim import annotate_sim

    params = load_params_or_exit(params_path)
    with _ls_errors():
        gt = read_table("points", points)
        _, adapter = _adapter(params, data_dir)
        with adapter:
            project = adapter.find_project(params.labelstudio.project_title)
            report = annotate_sim(adapter, project, gt, annotator=annotator, params=params.labelstudio,
                                  seed=params.seed, rounds=list(round) if round else None, limit=limit,
                                  labels=params.labels)
    typer.echo(report.line())
