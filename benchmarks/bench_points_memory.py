"""Peak memory of the ``points`` stage on one large round: the export read whole vs task by task.

A synthetic round of ``--tasks`` Label Studio tasks (``--points`` clicks each, one annotator, the keypoint results
nucleate pushes and Label Studio exports) is written as ``export.json``; then, each in a fresh subprocess, the
stage converts it: as it is (the export streamed task by task), and as it was (baseline: the export parsed whole and
held while converting). Prints JSON: seconds and peak RSS (``ru_maxrss``).

    python benchmarks/bench_points_memory.py --tasks 10000 --points 66
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
mode, work = sys.argv[1], sys.argv[2]
import pyarrow  # noqa: F401  libraries loaded before the clock, as in the stage's process
from nucleate.config import LabelStudioParams
from tasks import points
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if mode == "whole":  # baseline, what the stage did before: the export parsed whole, held while converting
    points.iter_round_tasks = lambda folder, n: iter(json.loads((Path(folder) / "export.json").read_bytes()))
if True:
    res = points.run(LabelStudioParams(), ("nucleus", "micronucleus"), annotations=f"{work}/annotations",
                     manifest=f"{work}/manifest.parquet", out=f"{work}/points.parquet",
                     consensus=f"{work}/consensus.parquet", report=f"{work}/points_report.json")
    n = res.points
print(json.dumps({"mode": mode, "seconds": round(time.perf_counter() - t0, 2), "count": n,
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "rss_before_mb": round(base / 1024, 1)}))
"""


def build(work: Path, n_tasks: int, n_points: int, seed: int = 0) -> int:
    import numpy as np

    from nucleate.annotations import keypoint_results
    from nucleate.io import write_table

    rng = np.random.default_rng(seed)
    size = 512
    ids = [f"img-{k:06d}" for k in range(n_tasks)]
    write_table("manifest", {"image_id": ids, "path": [f"{i}.tif" for i in ids], "width": [size] * n_tasks,
                             "height": [size] * n_tasks, "channels": [1] * n_tasks, "dtype": ["uint16"] * n_tasks,
                             "split": ["pool"] * n_tasks, "bytes": [1] * n_tasks}, work / "manifest.parquet")
    folder = work / "annotations" / "round-001"
    folder.mkdir(parents=True)
    with open(folder / "export.json", "w") as fh:  # written task by task: the builder stays small too
        fh.write("[")
        for k, image_id in enumerate(ids):
            xy = rng.uniform(1, size - 1, (n_points, 2))
            ann = {"id": k + 1, "completed_by": 1, "was_cancelled": False, "updated_at": "2026-12-01T10:00:00Z",
                   "created_at": "2026-12-01T10:00:00Z",
                   "result": keypoint_results(xy, ["nucleus"] * n_points, size, size)}
            task = {"id": k + 1, "data": {"image_id": image_id, "round": 1, "width": size, "height": size},
                    "annotations": [ann], "total_annotations": 1, "cancelled_annotations": 0}
            fh.write(("," if k else "") + json.dumps(task))
        fh.write("]")
    (folder / "server.json").write_text(json.dumps({"annotators": {"1": "ann@lab.org"}, "round": 1}))
    return (folder / "export.json").stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--points", type=int, default=66)
    args = ap.parse_args()
    env = {"PYTHONPATH": f"{REPO / 'src'}:{REPO}", "PATH": "/usr/bin:/bin"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        size = build(work, args.tasks, args.points)
        runs = [json.loads(subprocess.run([sys.executable, "-c", CHILD, mode, str(work)], env=env, check=True,
                                          capture_output=True, text=True).stdout.strip().splitlines()[-1])
                for mode in ("stage", "whole")]
    stage, whole = runs
    print(json.dumps({"tasks": args.tasks, "points_per_task": args.points, "export_mb": round(size / 2**20, 1),
                      "build_s": round(time.perf_counter() - t0, 1), "stage": stage, "baseline_whole_export": whole,
                      "peak_vs_baseline": round(stage["peak_rss_mb"] / whole["peak_rss_mb"], 2),
                      "growth_vs_baseline": round((stage["peak_rss_mb"] - stage["rss_before_mb"])
                                                  / (whole["peak_rss_mb"] - whole["rss_before_mb"]), 2),
                      "machine": f"{resource.getpagesize()} B pages, {sys.platform}"}, indent=1))


if __name__ == "__main__":
    main()
