"""``nucleate ls ...`` and ``nucleate annotate-sim``: Label Studio from the command line.

    nucleate ls up | down | status          the local server (.ls-data, 127.0.0.1, free port)
    nucleate ls push --selection S          one task per selected image (+ pre-annotations)
    nucleate ls progress [--round N]        total / finished / skipped / open tasks
    nucleate ls pull [--round N]            annotations -> points table + consensus + report
    nucleate annotate-sim --points GT       a simulated annotator posts clicks through the API
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import typer

from flows.ls_server import DEFAULT_DATA_DIR, LS_VERSION, LocalServer, ServerError, health
from nucleate.config import ParamsError, load_params
from nucleate.io import TableError, atomic_path, read_table

__all__ = ["ls_app", "annotate_sim_command", "pull_to_files"]

ls_app = typer.Typer(no_args_is_help=True, help="Label Studio: local server, push, progress, pull.")

_DATA = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help="Local server data dir (git-ignored).")
_PARAMS = typer.Option(Path("params.yaml"), "--params", help="params file (classes, labelstudio.*).")


def _err(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


def _load(params_path: Path):
    try:
        return load_params(params_path)
    except FileNotFoundError:
        raise _err(f"{params_path}: params file not found") from None
    except ParamsError as exc:
        raise _err(str(exc)) from None


def _adapter(params, data_dir: Path):
    from flows.labelstudio import Adapter, resolve_connection

    conn = resolve_connection(data_dir)
    p = params.labelstudio
    return conn, Adapter(conn, retries=p.retries, backoff_s=p.retry_backoff_s, batch_size=p.batch_size)


@contextlib.contextmanager
def _ls_errors():
    from flows.labelstudio import LabelStudioError

    try:
        yield
    except (LabelStudioError, ServerError, TableError, FileNotFoundError, KeyError, ValueError) as exc:
        raise _err(str(exc).strip("'\"")) from None


@ls_app.command("up")
def up(
    data_dir: Path = _DATA,
    port: int = typer.Option(None, help="Port on 127.0.0.1 (default: the previous one if free, else any free one)."),
) -> None:
    """Start the local Label Studio server (first start: database + admin user + token, ~30-80 s)."""
    server = LocalServer(data_dir)
    with _ls_errors():
        state = server.up(port=port)
    creds = server.credentials()
    typer.echo(f"Label Studio {LS_VERSION} running at {state['url']} (pid {state['pid']})")
    typer.echo(f"log in as {creds['email']}; password and API token: {data_dir / 'credentials.json'}")


@ls_app.command("down")
def down(data_dir: Path = _DATA) -> None:
    """Stop the local Label Studio server (its data stays in the data dir)."""
    with _ls_errors():
        stopped = LocalServer(data_dir).down()
    typer.echo("Label Studio stopped" if stopped else "Label Studio was not running")


@ls_app.command("status")
def status(data_dir: Path = _DATA) -> None:
    """Is the server up? (NUCLEATE_LS_URL when set, else the local server.)"""
    import os

    url = os.environ.get("NUCLEATE_LS_URL")
    if url:
        from flows.labelstudio import Adapter, LabelStudioError, resolve_connection

        ok = health(url)
        line = f"NUCLEATE_LS_URL {url}: {'up' if ok else 'not answering /health'}"
        if ok:
            try:
                me = Adapter(resolve_connection(data_dir), retries=0).whoami()
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
    typer.echo(f"Label Studio running at {state['url']} (pid {state['pid']}): "
               f"{'healthy' if ok else 'not answering /health'}")
    if not ok:
        raise typer.Exit(1)


def _selection_round(selection: pa.Table, round: int | None) -> tuple[int, list[str]]:
    rounds = selection.column("round").to_pylist()
    if not rounds:
        raise ValueError("the selection table is empty: nothing to push")
    r = max(rounds) if round is None else round
    rows = selection.filter(pc.equal(selection.column("round"), r))
    if not rows.num_rows:
        raise ValueError(f"the selection has no rows for round {r} (rounds present: {sorted(set(rounds))})")
    order = rows.sort_by("rank") if "rank" in rows.column_names else rows
    return r, order.column("image_id").to_pylist()


@ls_app.command("push")
def push(
    selection: Path = typer.Option(Path("storage/selection.parquet"), help="Selection table of the round."),
    manifest: Path = typer.Option(Path("storage/manifest.parquet"), help="Manifest (image paths and sizes)."),
    round: int = typer.Option(None, help="Round to push (default: the selection's latest)."),
    predictions: Path = typer.Option(None, help="Points table of the student's predictions (pre-annotations)."),
    model_version: str = typer.Option(None, help="Name of the predictions' model (shown in Label Studio)."),
    params_path: Path = _PARAMS,
    data_dir: Path = _DATA,
) -> None:
    """Push the selected images as Label Studio tasks (idempotent: images already there are left alone)."""
    from flows.labelstudio import render_images

    params = _load(params_path)
    with _ls_errors():
        sel = read_table("selection", selection)
        r, image_ids = _selection_round(sel, round)
        man = read_table("manifest", manifest)
        preds = pq_read(predictions) if predictions else None
        conn, adapter = _adapter(params, data_dir)
        if conn.files_root is None:
            raise ValueError("NUCLEATE_LS_FILES_ROOT is not set: point it at the server's "
                             "LOCAL_FILES_DOCUMENT_ROOT so images can be placed where Label Studio serves them")
        mv = model_version or (f"round-{r:03d}" if preds is not None else None)
        project = adapter.ensure_project(params.labelstudio.project_title, params.labels, model_version=mv)
        records = render_images(man, image_ids, conn.files_root)
        adapter.ensure_storage(project, conn.files_root / "images")
        report = adapter.push(project, [records[i] for i in image_ids], round=r, predictions=preds,
                              model_version=mv, classes=params.labels,
                              marker_pct=params.labelstudio.point_radius_pct)
    for line in report.lines():
        typer.echo(line)
    typer.echo(f"open {conn.url}/projects/{project}/data")


def pq_read(path: Path) -> pa.Table:
    """A predictions table: a points table, or any Parquet file with image_id, x, y, label[, score]."""
    import pyarrow.parquet as pq

    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: predictions table not found")
    return pq.read_table(path)


@ls_app.command("progress")
def progress(
    round: int = typer.Option(None, help="Round (default: all)."),
    params_path: Path = _PARAMS,
    data_dir: Path = _DATA,
) -> None:
    """Tasks of the round: total, finished (annotated or skipped), skipped, open."""
    params = _load(params_path)
    with _ls_errors():
        _, adapter = _adapter(params, data_dir)
        project = adapter.find_project(params.labelstudio.project_title)
        p = adapter.progress(project, round)
    where = f"round {round}" if round is not None else "all rounds"
    typer.echo(f"{where}: {p['finished']}/{p['total']} finished ({p['annotated']} annotated, {p['skipped']} skipped), "
               f"{p['open']} open")
    typer.echo(json.dumps(p))


def pull_to_files(adapter, project: int, params, *, out_dir: Path, rounds=None, expected=None,
                  log=lambda line: print(line, file=sys.stderr)) -> dict:
    """Pull annotations and write ``points.parquet``, ``consensus.parquet`` and ``report.json`` in
    ``out_dir``, all or nothing (written to temp files, renamed together at the end)."""
    import pyarrow.parquet as pq

    from nucleate.annotations import agreement, consensus_table
    from nucleate.io import validate_table

    p = params.labelstudio
    result = adapter.pull(project, classes=params.labels, rounds=rounds, expected_image_ids=expected)
    agree = agreement(result.points, p.agreement_radius_px, annotators=result.annotators)
    consensus = consensus_table(result.points, p.agreement_radius_px, p.consensus_min_fraction,
                                annotators=result.annotators)
    report = {
        "project_id": project, "rounds": None if rounds is None else list(rounds), **result.summary(),
        "consensus_points": consensus.num_rows, "rejected": [r.line() for r in result.rejected],
        "deleted_image_ids": result.missing_image_ids, "agreement": agree.as_dict(),
    }
    out_dir = Path(out_dir)
    with contextlib.ExitStack() as stack:
        paths = {name: stack.enter_context(atomic_path(out_dir / name))
                 for name in ("points.parquet", "consensus.parquet", "report.json")}
        pq.write_table(validate_table("points", result.points), paths["points.parquet"], compression="zstd")
        pq.write_table(consensus, paths["consensus.parquet"], compression="zstd")
        paths["report.json"].write_text(json.dumps(report, indent=2) + "\n")
    for r in result.rejected:
        log(r.line())
    if result.missing_image_ids:
        shown = ", ".join(result.missing_image_ids[:10]) + (" ..." if len(result.missing_image_ids) > 10 else "")
        log(f"pull: {len(result.missing_image_ids)} pushed image(s) have no task any more (deleted in Label "
            f"Studio): {shown}")
    return report


@ls_app.command("pull")
def pull(
    out_dir: Path = typer.Option(Path("storage/annotations"), "--out", help="Folder for points/consensus/report."),
    round: list[int] = typer.Option(None, help="Round(s) to pull (default: all)."),
    selection: Path = typer.Option(None, help="Selection table: pushed images missing in Label Studio are reported."),
    params_path: Path = _PARAMS,
    data_dir: Path = _DATA,
) -> None:
    """Annotations -> points table (pixels), consensus points and a report (counts, rejects, agreement)."""
    params = _load(params_path)
    rounds = list(round) if round else None
    with _ls_errors():
        expected = None
        if selection is not None:
            sel = read_table("selection", selection)
            if rounds is not None:
                sel = sel.filter(pc.is_in(sel.column("round"), value_set=pa.array(rounds, pa.int32())))
            expected = sel.column("image_id").to_pylist()
        _, adapter = _adapter(params, data_dir)
        project = adapter.find_project(params.labelstudio.project_title)
        report = pull_to_files(adapter, project, params, out_dir=out_dir, rounds=rounds, expected=expected,
                               log=lambda line: typer.echo(line, err=True))
    typer.echo(f"pull: {report['points']} points from {report['annotations']} annotation(s) on "
               f"{report['annotated_tasks']}/{report['tasks']} task(s); {report['cancelled_annotations']} skipped, "
               f"{report['superseded_annotations']} superseded, {report['rejected_points']} point(s) rejected, "
               f"{report['deleted_tasks']} task(s) deleted; {report['consensus_points']} consensus points -> {out_dir}")
    for pair in report["agreement"]["pairs"]:
        typer.echo(f"agreement {pair['annotator_a']} vs {pair['annotator_b']}: F1 {pair['f1']:.3f} on "
                   f"{pair['images']} image(s)")


def annotate_sim_command(
    points: Path = typer.Option(..., help="Ground-truth points table (e.g. storage/sample/points.parquet)."),
    annotator: str = typer.Option("sim-1@nucleate.local", help="The simulated annotator's e-mail (user created)."),
    round: list[int] = typer.Option(None, help="Round(s) to annotate (default: all)."),
    limit: int = typer.Option(None, help="Annotate at most this many tasks."),
    params_path: Path = _PARAMS,
    data_dir: Path = _DATA,
) -> None:
    """Simulated annotator: post jittered ground-truth clicks (with misses and false clicks) to open tasks."""
    from flows.annotate_sim import annotate_sim

    params = _load(params_path)
    with _ls_errors():
        gt = read_table("points", points)
        _, adapter = _adapter(params, data_dir)
        project = adapter.find_project(params.labelstudio.project_title)
        report = annotate_sim(adapter, project, gt, annotator=annotator, params=params.labelstudio,
                              seed=params.seed, rounds=list(round) if round else None, limit=limit,
                              classes=params.labels)
    typer.echo(report.line())
