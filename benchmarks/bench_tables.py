"""Parquet tables at pool scale: write / read seconds, file size and peak RSS of nucleate's tables at 10⁶ rows.

For each table kind, a fresh subprocess builds N synthetic rows with the real schema, writes them with
:func:`nucleate.io.write_table` (validation + atomic zstd Parquet) and reads them back with
:func:`nucleate.io.read_table` (read + validation). Baseline in the same subprocess: plain
``pyarrow.parquet.write_table`` / ``read_table`` of the same table (zstd, no validation, no atomic rename), so the
ratio is what nucleate's checks cost on top of Parquet itself.

    python benchmarks/bench_tables.py [--rows 1000000] [--classes 50] [--points-per-image 65]

``points`` rows are ``rows × points-per-image / 10`` (a tenth of the pool annotated, a realistic upper end after
many rounds); times are the best of 2; peak RSS is the subprocess's high-water mark (``ru_maxrss``) after everything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time
from datetime import UTC, datetime
from pathlib import Path
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from nucleate.io import read_table, write_table
from nucleate.io.tables import SCHEMAS, probs_table

kind, n, classes, folder = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
rng = np.random.default_rng(0)
ids = pa.array([f"{i:016x}" for i in rng.permutation(n).tolist()], pa.string())
if kind == "manifest":
    table = pa.table({"image_id": ids, "path": pa.array([f"slide_{i // 1000:04d}/tile_{i:07d}.png" for i in range(n)]),
                      "width": pa.array(np.full(n, 512, np.int32)), "height": pa.array(np.full(n, 512, np.int32)),
                      "channels": pa.array(np.full(n, 3, np.int8)), "dtype": pa.array(["uint8"] * n),
                      "split": pa.array(["pool"] * n), "bytes": pa.array(rng.integers(1e5, 1e6, n))})
    table = table.cast(SCHEMAS["manifest"])
elif kind == "teacher_probs":
    probs = rng.dirichlet(np.ones(classes), n).astype(np.float32)
    probs /= probs.sum(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    table = probs_table(ids, probs, classes=[f"c{j}" for j in range(classes)], teacher_id="bench")
elif kind == "points":
    image = pa.array([f"{i // 65:016x}" for i in range(n)], pa.string())  # 65 points per image
    table = pa.table({"image_id": image, "x": rng.uniform(0, 512, n), "y": rng.uniform(0, 512, n),
                      "label": pa.array(["nucleus"] * n), "annotator": pa.array(["ann1"] * n),
                      "task_id": pa.array(rng.integers(1, 1e6, n)), "annotation_id": pa.array(rng.integers(1, 1e6, n)),
                      "round": pa.array(np.ones(n, np.int32)), "origin": pa.array(["manual"] * n),
                      "created_at": pa.array(np.full(n, np.datetime64("2026-12-01T00:00:00", "us")),
                                             pa.timestamp("us", tz="UTC"))})
else:
    raise SystemExit(f"unknown kind {kind}")
out = {"kind": kind, "rows": n}

def best(call):  # best of 2: the first read of a file pays for the page cache
    times = []
    for _ in range(2):
        t = time.perf_counter(); call(); times.append(time.perf_counter() - t)
    return round(min(times), 3)

out["plain_write_s"] = best(lambda: pq.write_table(table, folder / "plain.parquet", compression="zstd"))
out["plain_read_s"] = best(lambda: pq.read_table(folder / "plain.parquet"))
out["write_s"] = best(lambda: write_table(kind, table, folder / "t.parquet"))
out["read_s"] = best(lambda: read_table(kind, folder / "t.parquet"))
out["file_mb"] = round((folder / "t.parquet").stat().st_size / 2**20, 1)
out["in_memory_mb"] = round(table.nbytes / 2**20, 1)
out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
out["write_vs_plain"] = round(out["write_s"] / max(out["plain_write_s"], 1e-9), 2)
out["read_vs_plain"] = round(out["read_s"] / max(out["plain_read_s"], 1e-9), 2)
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="pool images (rows of manifest / teacher_probs)")
    parser.add_argument("--classes", type=int, default=50, help="teacher classes (probs row length)")
    parser.add_argument("--points-per-image", type=int, default=65, help="points per annotated image")
    args = parser.parse_args(argv)
    results = []
    plan = [("manifest", args.rows), ("teacher_probs", args.rows),
            ("points", args.rows * args.points_per_image // 10)]
    for kind, n in plan:
        with tempfile.TemporaryDirectory() as folder:
            proc = subprocess.run([sys.executable, "-c", CHILD, kind, str(n), str(args.classes), folder],
                                  capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{kind}: the benchmark child failed:\n{proc.stderr[-2000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({"machine": platform.machine(), "cpus": os.cpu_count(),
                      "python": platform.python_version(), "tables": results}, indent=1))


if __name__ == "__main__":
    main()
