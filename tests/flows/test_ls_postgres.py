"""Label Studio 1.23.2 on PostgreSQL with uWSGI worker processes (`nucleate ls up --workers N`), against a
throwaway PostgreSQL cluster (flows.local_postgres: Debian's `postgresql` server programs, 127.0.0.1, free port).

One cluster and one Label Studio (2 workers) per session: migrating a new PostgreSQL database takes most of
the time here. Covered: the push -> annotate -> pull round trip with two annotators posting at the same time
(each from its own thread and connection), the password kept out of every output and file, and PostgreSQL
down / a wrong password giving one line that names host:port/db and the fix, with nothing written or lost.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.local_postgres import LocalPostgres
from flows.ls_server import LocalServer

pytestmark = pytest.mark.slow
WORKERS = 2


@pytest.fixture(scope="session")
def pg_cluster():
    """A new PostgreSQL cluster (fsync off: nothing to keep) on 127.0.0.1; stopped and deleted afterwards."""
    pg = LocalPostgres(durable=False)
    try:
        pg.start()
        yield pg
    finally:
        pg.remove()


@pytest.fixture(scope="session")
def pg_ls(pg_cluster, tmp_path_factory):
    """Label Studio on ``pg_cluster`` with :data:`WORKERS` uWSGI workers (first start: migrations on PostgreSQL)."""
    server = LocalServer(tmp_path_factory.mktemp("pg-ls") / "data", environ={**os.environ, **pg_cluster.env()})
    try:
        server.up(workers=WORKERS, timeout=240)
        yield server
    finally:
        server.down()


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        out += [int(k) for k in kids]
    return out


def _files_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*")
                   if p.is_file() and p.stat().st_size < 5_000_000 and p.suffix not in (".png",))


def test_round_trip_on_postgres_with_two_annotators_at_once(pg_ls, pg_cluster, rounds, tmp_path):
    from flows.ls_client import Adapter
    from flows.ls_connection import resolve_connection
    from flows.ls_pull import pull
    from flows.ls_push import load_inflight
    from nucleate.annotations import keypoint_results
    from nucleate.config import LabelStudioParams
    from nucleate.io import read_table, write_table
    from tasks import points as points_stage

    state = pg_ls.state()
    assert state["server"] == "uwsgi" and state["workers"] == WORKERS
    assert state["database"] == f"postgresql 127.0.0.1:{pg_cluster.port}/labelstudio"
    # the uWSGI master forks WORKERS workers (and its HTTP router)
    assert len(_children(state["pid"])) >= WORKERS

    conn = resolve_connection(pg_ls.data_dir, env={})
    ids = rounds.pick(8, square=None)
    inflight = tmp_path / "inflight.parquet"
    with Adapter(conn, retries=2, backoff_s=0.2) as admin:
        pid, report = rounds.push(admin, ids, inflight=inflight)
        assert len(report.created) == 8
        users = {who: admin.ensure_user(who) for who in ("alice@lab.org", "bob@lab.org")}
    share = {"alice@lab.org": ids[0::2], "bob@lab.org": ids[1::2]}
    gt = rounds.gt.to_pylist()
    posted: dict[str, tuple[str, int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def annotator(who: str) -> None:  # its own connection; both post at the same time, to different tasks
        try:
            with Adapter(conn, retries=2, backoff_s=0.2) as ad:
                start.wait(timeout=30)
                for image_id in share[who]:
                    pts = [r for r in gt if r["image_id"] == image_id]
                    w, h = rounds.sizes[image_id]
                    xy = np.array([[r["x"], r["y"]] for r in pts])
                    result = keypoint_results(xy, [r["label"] for r in pts], w, h)
                    posted[image_id] = (who, ad.annotate(report.created[image_id], result, user_id=users[who]))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=annotator, args=(who,)) for who in share]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(posted) == 8 and len({a for _, a in posted.values()}) == 8

    ann = tmp_path / "annotations"
    with Adapter(conn, retries=2, backoff_s=0.2) as admin:
        got = pull(admin, pid, annotations=ann, inflight=inflight)
    assert [(r.tasks, r.finished) for r in got.rounds] == [(8, 8)]
    assert load_inflight(inflight).num_rows == 0
    export = json.loads((ann / "round-001" / "export.json").read_bytes())
    by_task = {t["id"]: t for t in export}
    for image_id, (who, ann_id) in posted.items():      # each task: exactly its annotator's one annotation
        anns = by_task[report.created[image_id]]["annotations"]
        assert [(a["id"], a["completed_by"]) for a in anns] == [(ann_id, users[who])]
    write_table("manifest", rounds.manifest, tmp_path / "manifest.parquet")
    stage = tmp_path / "stage"
    points_stage.run(LabelStudioParams(), rounds.labels, annotations=ann, manifest=tmp_path / "manifest.parquet",
                     out=stage / "points.parquet", consensus=stage / "consensus.parquet", report=stage / "report.json")
    points, rep = read_table("points", stage / "points.parquet"), json.loads((stage / "report.json").read_text())
    truth = {(r["image_id"], round(r["x"], 6), round(r["y"], 6)) for r in gt if r["image_id"] in posted}
    got_pts = [(r["image_id"], round(r["x"], 6), round(r["y"], 6)) for r in points.to_pylist()]
    assert len(got_pts) == len(set(got_pts)) == len(truth) and set(got_pts) == truth   # no duplicates, no drops
    assert {r["annotator"] for r in points.to_pylist()} == set(share)
    assert rep["rounds"]["1"]["finished"] == 8

    # the password is in no file of the data dir (state, log, credentials, marker) nor in the status output
    password = pg_cluster.password()
    assert password not in _files_text(pg_ls.data_dir)
    out = CliRunner().invoke(app, ["ls", "status", "--data-dir", str(pg_ls.data_dir)], env={}).output
    assert f"postgresql 127.0.0.1:{pg_cluster.port}/labelstudio, {WORKERS} uWSGI workers" in out and password not in out


def _up(data: Path, env: dict[str, str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["ls", "up", "--data-dir", str(data)], env=env, catch_exceptions=False)
    return result.exit_code, result.output


def test_postgres_down_or_wrong_password_is_one_line_and_changes_nothing(pg_ls, pg_cluster, tmp_path):
    import shutil

    # a copy of the session's initialised data dir (not running: a running server is just reported by `up`)
    data = tmp_path / "ls-data"
    shutil.copytree(pg_ls.data_dir, data, ignore=shutil.ignore_patterns("server.json"))
    before = {p.relative_to(data): p.read_bytes() for p in data.rglob("*") if p.is_file()}
    wrong = "not-the-password-Zq81"
    where = f"PostgreSQL at 127.0.0.1:{pg_cluster.port}/labelstudio"

    code, out = _up(data, pg_cluster.env(password=wrong))
    lines = out.strip().splitlines()
    assert code == 1 and len(lines) == 1, out
    assert lines[0].startswith(f"error: {where} rejected the password of user 'nucleate'")
    assert "POSTGRE_PASSWORD" in lines[0]
    assert wrong not in out and pg_cluster.password() not in out
    fresh = tmp_path / "new-ls-data"         # a first `up` with a wrong password leaves no data dir behind
    assert _up(fresh, pg_cluster.env(password=wrong))[0] == 1 and not fresh.exists()

    pg_cluster.stop()                        # PostgreSQL down
    try:
        code, out = _up(data, pg_cluster.env())
    finally:
        pg_cluster.restart()
    lines = out.strip().splitlines()
    assert code == 1 and len(lines) == 1, out
    assert lines[0].startswith(f"error: {where} is not reachable") and "POSTGRE_HOST" in lines[0], out
    assert "nothing was changed" in lines[0] and pg_cluster.password() not in out

    # nothing written or lost: the same files, no server state, no password anywhere
    assert {p.relative_to(data): p.read_bytes() for p in data.rglob("*") if p.is_file()} == before
    assert not (data / "server.json").exists()
    assert wrong not in _files_text(data) and pg_cluster.password() not in _files_text(data)
    # the session's server (its database was down for a moment) still answers with its token
    from flows.ls_client import Adapter
    from flows.ls_connection import resolve_connection

    with Adapter(resolve_connection(pg_ls.data_dir, env={}), retries=2, backoff_s=0.5) as admin:
        assert admin.whoami()["email"] == "admin@nucleate.local"
