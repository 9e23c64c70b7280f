"""Label Studio throughput: push N tasks (with pre-annotations) and pull N annotations; prints JSON.

Against a real local Label Studio 1.23.2 (``LocalServer``: SQLite, one process on 127.0.0.1):

* ``push``: ``flows.ls_push.push`` of N new tasks in ``batch_size`` imports, each with a pre-annotation of the
  real sample image's ground-truth centroids (65 points on average). Display PNGs are rendered once
  beforehand (N task records point at the 49 rendered sample images under distinct image ids); the
  rendering cost per image is reported separately.
* ``pull``: ``flows.ls_pull.pull`` of a project whose N tasks each hold one submitted annotation (the same
  point sets; set up by bulk import, not timed): paginated task listing + ``ids``-paged JSON export, saved
  unchanged under ``annotations/round-001``; then, timed apart, the ``points`` stage converting that export
  to the points tables.
* baselines in the same run: push one task per request (on ``--baseline-n`` tasks, scaled to N) and
  pull as one unpaginated full-project export (``--baseline-n 0``: neither).

``--backends``: the servers to compare in one run, each on a new data dir (and database), with the same client:
``sqlite`` (``label-studio start``: Django's server, one process, SQLite) and ``pg:W`` (PostgreSQL from
``flows.local_postgres``, a new cluster with default durability, and ``W`` uWSGI workers, as
``nucleate ls up --workers W``). Server CPU counts every process of the server: Label Studio's (uWSGI master,
router, workers) and, on PostgreSQL, the database's (postmaster and backends).

    python benchmarks/bench_labelstudio.py --n 10000            # ~10 min on 2 cores (first run: + init)
    python benchmarks/bench_labelstudio.py --n 10000 --backends sqlite,pg:2,pg:4 --baseline-n 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402

from flows.local_postgres import LocalPostgres  # noqa: E402
from flows.ls_client import Adapter  # noqa: E402
from flows.ls_connection import resolve_connection  # noqa: E402
from flows.ls_pull import pull  # noqa: E402
from flows.ls_push import ImageRecord, push, render_images, task_json  # noqa: E402
from flows.ls_server import LocalServer  # noqa: E402
from nucleate.annotations import keypoint_results  # noqa: E402
from nucleate.config import LabelStudioParams  # noqa: E402
from nucleate.io import read_table, write_table  # noqa: E402
from tasks import points as points_stage  # noqa: E402

CLASSES = ("nucleus", "micronucleus")


def _sample(tmp: Path) -> tuple[pa.Table, pa.Table]:
    from tasks import ingest, sample_data

    sample_data.run(out=tmp / "sample", install=False)
    ingest.run(folder=tmp / "sample" / "images", manifest=tmp / "manifest.parquet")
    return read_table("manifest", tmp / "manifest.parquet"), read_table("points", tmp / "sample" / "points.parquet")


def _server_cpu_s(pids: tuple[int, ...]) -> float:
    """CPU seconds (user + system) used so far by the processes ``pids`` and all their descendants, those that
    ended included (their reaper's children times)."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parent[pid] = int(fields[1])
        ticks[pid] = sum(int(f) for f in fields[11:15])   # utime, stime, cutime, cstime
    total = 0
    for pid in ticks:
        p = pid
        while p and p not in pids:
            p = parent.get(p, 0)
        if p:
            total += ticks[pid]
    return total / os.sysconf("SC_CLK_TCK")


class _Clock:
    """Wall time, server CPU and client CPU of one phase (CPU time does not depend on other jobs' load).

    ``server_pid``: the server's process(es), their descendants counted too; ``server_cpu`` sums them all and
    ``db_cpu`` the database's share (the last pid's tree when there are two: PostgreSQL's postmaster)."""

    def __init__(self, server_pid: int | tuple[int, ...]):
        self.pid = server_pid if isinstance(server_pid, tuple) else (server_pid,)
        self.db = self.pid[1:]

    def _db_cpu(self) -> float:
        return _server_cpu_s(self.db) if self.db else 0.0

    def __enter__(self):
        self.t, self.s, self.c = time.perf_counter(), _server_cpu_s(self.pid), time.process_time()
        self.d = self._db_cpu()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t
        self.server_cpu = _server_cpu_s(self.pid) - self.s
        self.client_cpu = time.process_time() - self.c
        self.db_cpu = self._db_cpu() - self.d if self.db else None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--baseline-n", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--data-dir", type=Path, default=None, help="initialised SQLite data dir to copy (default: init)")
    ap.add_argument("--pg-conf", action="append", default=[], metavar="NAME=VALUE",
                    help="PostgreSQL server setting for the pg backends (repeatable)")
    ap.add_argument("--backends", default="sqlite", help="comma-separated: sqlite, pg:WORKERS (e.g. sqlite,pg:2,pg:4)")
    args = ap.parse_args(argv)

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-ls-") as tmp_s:
        tmp = Path(tmp_s)
        manifest, gt = _sample(tmp)
        for backend in backends:
            print(f"bench: {backend} ...", file=sys.stderr)
            runs.append(_run_backend(args, backend, manifest, gt, tmp / backend.replace(":", "-")))
            print(json.dumps(runs[-1]), file=sys.stderr)
    if len(runs) == 1:
        return runs[0]
    base = runs[0]
    for r in runs[1:]:
        r["push_speedup_vs_" + base["backend"]] = round(base["push_s"] / r["push_s"], 2)
        r["pull_speedup_vs_" + base["backend"]] = round(base["pull_s"] / r["pull_s"], 2)
    return {"benchmark": "labelstudio_backends", "machine": base["machine"], "n_tasks": args.n,
            "goal": "push and pull of 10,000 tasks < 60 s each with the same client",
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "runs": runs}


def _run_backend(args, backend: str, manifest: pa.Table, gt: pa.Table, work: Path) -> dict:
    """One server (``sqlite`` or ``pg:W``) on a new data dir / database: start, :func:`_bench`, stop."""
    work.mkdir(parents=True)
    pg = None
    workers = None
    environ = dict(os.environ)
    if backend.startswith("pg"):
        workers = int(backend.partition(":")[2] or 2)
        pg = LocalPostgres(settings=dict(c.split("=", 1) for c in args.pg_conf)).start()
        environ.update(pg.env())
    elif backend != "sqlite":
        raise SystemExit(f"unknown backend {backend!r}: sqlite or pg:WORKERS")
    try:
        server = LocalServer(work / "ls-data", environ=environ)
        if args.data_dir is not None and pg is None:
            import shutil

            shutil.copytree(args.data_dir, server.data_dir)
            (server.data_dir / "server.json").unlink(missing_ok=True)
        t0 = time.perf_counter()
        server.up(log=lambda line: print(line, file=sys.stderr), workers=workers, timeout=300)
        start_s = time.perf_counter() - t0
        try:
            conn = resolve_connection(server.data_dir, env={})
            state = server.state()
            pids = (state["pid"],) if pg is None else (state["pid"], _postmaster(pg))
            with Adapter(conn, batch_size=args.batch_size) as ad, Adapter(conn, batch_size=1) as one:
                out = _bench(args, conn, ad, one, manifest, gt, start_s, pids, work)
        finally:
            server.down()
    finally:
        if pg is not None:
            pg.remove()
    out["backend"] = backend.replace(":", "")
    out["label_studio"] = ("1.23.2 (SQLite, runserver, 1 process)" if pg is None else
                           f"1.23.2 (PostgreSQL {_pg_version(pg)}, uWSGI, {workers} workers)")
    if pg is not None and pg.settings:
        out["postgres_settings"] = pg.settings
    return out


def _postmaster(pg: LocalPostgres) -> int:
    return int((pg.data / "postmaster.pid").read_text().split()[0])


def _pg_version(pg: LocalPostgres) -> str:
    import subprocess

    return subprocess.run([str(pg.pg_bin / "postgres"), "--version"], capture_output=True, text=True).stdout.split()[2]


def _bench(args, conn, ad: Adapter, one: Adapter, manifest: pa.Table, gt: pa.Table, start_s: float,
           server_pid: tuple[int, ...], work: Path) -> dict:
    ids = manifest.column("image_id").to_pylist()
    t0 = time.perf_counter()
    recs = render_images(manifest, ids, conn.files_root)
    render_ms = 1000 * (time.perf_counter() - t0) / len(ids)
    mp = sum(r["width"] * r["height"] for r in manifest.to_pylist()) / len(ids) / 1e6

    by_image: dict[str, list] = {}
    for row in gt.select(["image_id", "x", "y", "label"]).to_pylist():
        by_image.setdefault(row["image_id"], []).append(row)
    src = [ids[i % len(ids)] for i in range(args.n)]
    records = [ImageRecord(f"bench-{i:06d}", recs[s].rel, recs[s].width, recs[s].height, recs[s].name)
               for i, s in enumerate(src)]
    pred_cols = {"image_id": [], "x": [], "y": [], "label": [], "score": []}
    for rec, s in zip(records, src, strict=True):
        for row in by_image[s]:
            pred_cols["image_id"].append(rec.image_id)
            pred_cols["x"].append(row["x"])
            pred_cols["y"].append(row["y"])
            pred_cols["label"].append(row["label"])
            pred_cols["score"].append(0.9)
    preds = pa.table(pred_cols)
    n_points = preds.num_rows

    # -- push: ours (batched) --------------------------------------------------------------------
    pid = ad.ensure_project("bench push", CLASSES, model_version="bench")
    ad.ensure_storage(pid, conn.files_root / "images")
    with _Clock(server_pid) as push_clock:
        rep = push(ad, pid, records, round=1, labels=CLASSES, marker_pct=0.6, predictions=preds,
                   model_version="bench", inflight=work / "inflight.parquet")
    push_s = push_clock.wall
    rss_after_push = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert len(rep.created) == args.n and rep.predictions == args.n
    t0 = time.perf_counter()
    again = push(ad, pid, records, round=1, labels=CLASSES, marker_pct=0.6, predictions=preds,
                 model_version="bench", inflight=work / "inflight.parquet")
    repush_s = time.perf_counter() - t0
    assert again.created == {}
    t0 = time.perf_counter()
    prog = ad.progress(pid, 1)
    progress_s = time.perf_counter() - t0
    assert prog["total"] == args.n

    # -- push baseline: one task per request -----------------------------------------------------
    base_push_s = base_pull_s = None
    if args.baseline_n:
        base_push_s = _baseline_push(args, ad, one, records, preds)

    # -- pull: a project with one annotation per task (bulk-imported set-up, not timed) -----------
    pid_a = ad.ensure_project("bench pull", CLASSES)
    me = ad.whoami()["id"]
    t0 = time.perf_counter()
    for start in range(0, args.n, 1000):
        payload = []
        for rec, s in zip(records[start:start + 1000], src[start:start + 1000], strict=True):
            rows = by_image[s]
            task = task_json(rec, 1, None, None, 0.6)
            task["annotations"] = [{"completed_by": me, "result": keypoint_results(
                [(r["x"], r["y"]) for r in rows], [r["label"] for r in rows], rec.width, rec.height)}]
            payload.append(task)
        ad.import_tasks(pid_a, payload)
    setup_s = time.perf_counter() - t0
    with _Clock(server_pid) as pull_clock:  # raw export saved unchanged under annotations/round-001
        pull(ad, pid_a, annotations=work / "annotations")
    pull_s = pull_clock.wall
    # the points stage converts the saved export (its manifest: the benchmark's synthetic image ids)
    write_table("manifest", {"image_id": [r.image_id for r in records], "path": [r.name for r in records],
                             "width": [r.width for r in records], "height": [r.height for r in records],
                             "channels": [1] * len(records), "dtype": ["uint16"] * len(records),
                             "split": ["pool"] * len(records), "bytes": [0] * len(records)},
                work / "bench_manifest.parquet")
    t0 = time.perf_counter()
    res = points_stage.run(LabelStudioParams(), CLASSES, annotations=work / "annotations",
                           manifest=work / "bench_manifest.parquet", out=work / "points.parquet",
                           consensus=work / "consensus.parquet", report=work / "points_report.json")
    points_s = time.perf_counter() - t0
    rss_after_pull = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert res.points == n_points, res.as_dict()

    if args.baseline_n:
        t0 = time.perf_counter()
        full = json.loads(b"".join(ad._ls.projects.exports.download_sync(  # the SDK's one-request export
            pid_a, export_type="JSON", download_all_tasks=True)))
        base_pull_s = time.perf_counter() - t0
        assert len(full) == args.n

    return {
        "benchmark": "labelstudio",
        "machine": f"{os.cpu_count()}-core {platform.machine()}, Python {platform.python_version()}",
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "note": "other jobs share the cores: *_cpu_s are load-independent; wall ~ server + client CPU when idle",
        "label_studio": "1.23.2 (SQLite, runserver, 1 process)",
        "n_tasks": args.n,
        "points_per_task_mean": round(n_points / args.n, 1),
        "batch_size": args.batch_size,
        "server_start_s": round(start_s, 2),
        "render_ms_per_image": round(render_ms, 1),
        "render_image_megapixels_mean": round(mp, 3),
        "push_s": round(push_s, 2),
        "push_tasks_per_s": round(args.n / push_s, 1),
        "push_server_cpu_s": round(push_clock.server_cpu, 2),
        "push_server_cpu_s_of_which_database": _r(push_clock.db_cpu),
        "push_client_cpu_s": round(push_clock.client_cpu, 2),
        "repush_noop_s": round(repush_s, 2),
        "progress_s": round(progress_s, 2),
        "baseline_push_one_per_request_s_scaled": _r(base_push_s),
        "push_speedup_vs_baseline": _r(base_push_s and base_push_s / push_s),
        "pull_setup_bulk_import_s": round(setup_s, 2),
        "pull_s": round(pull_s, 2),
        "pull_annotations_per_s": round(args.n / pull_s, 1),
        "pull_server_cpu_s": round(pull_clock.server_cpu, 2),
        "pull_server_cpu_s_of_which_database": _r(pull_clock.db_cpu),
        "pull_client_cpu_s": round(pull_clock.client_cpu, 2),
        "points_stage_s": round(points_s, 2),
        "pull_points": res.points,
        "baseline_pull_single_full_export_s": _r(base_pull_s),
        "pull_ratio_vs_single_export": _r(base_pull_s and base_pull_s / pull_s),
        "client_peak_rss_mb_after_push": round(rss_after_push, 1),
        "client_peak_rss_mb_after_pull": round(rss_after_pull, 1),
        "client_peak_rss_mb_after_baselines": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _baseline_push(args, ad: Adapter, one: Adapter, records: list, preds: pa.Table) -> float:
    """Push ``--baseline-n`` tasks one per request; seconds scaled to N."""
    pid_b = ad.ensure_project("bench push baseline", CLASSES, model_version="bench")
    base_recs = [ImageRecord(f"base-{i:06d}", r.rel, r.width, r.height, r.name)
                 for i, r in enumerate(records[:args.baseline_n])]
    base_preds = preds.filter(pa.compute.is_in(preds.column("image_id"),
                                               value_set=pa.array([r.image_id for r in records[:args.baseline_n]])))
    base_preds = base_preds.set_column(0, "image_id", pa.array(
        [v.replace("bench-", "base-") for v in base_preds.column("image_id").to_pylist()]))
    t0 = time.perf_counter()
    push(one, pid_b, base_recs, round=1, labels=CLASSES, marker_pct=0.6, predictions=base_preds,
         model_version="bench")
    return (time.perf_counter() - t0) * args.n / args.baseline_n


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
