"""Ingest throughput and memory: files/s and peak RSS for a pool of N synthetic 16-bit images.

Baseline in the same run: the bare loop every ingest must do (hash + full decode of each file, no
manifest); the ratio says how much the stage itself costs on top. Peak RSS is measured in a fresh
subprocess per N, so growth between N values shows whether memory depends on the pool size.

    python benchmarks/bench_ingest.py [--sizes 1000 4000] [--side 256]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = """
import json, resource, sys, time
from pathlib import Path
from nucleate.io import content_id, read_image
from tasks import ingest
mode, root, manifest = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
t = time.perf_counter()
if mode == "baseline":
    n = 0
    for p in sorted(root.rglob("*.tif")):
        content_id(p); read_image(p); n += 1
else:
    n = ingest.run(folder=root, manifest=manifest).total
dt = time.perf_counter() - t
print(json.dumps({"files": n, "seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _child(mode: str, root: Path, manifest: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(root), str(manifest)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--side", type=int, default=256, help="image side, pixels")
    args = parser.parse_args()
    from nucleate.io import write_image

    rng = np.random.default_rng(0)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pool"
        made = 0
        for n in sorted(args.sizes):
            for i in range(made, n):
                write_image(root / f"{i // 1000:03d}" / f"{i:06d}.tif",
                            rng.integers(0, 4096, (args.side, args.side), dtype=np.uint16))
            made = n
            manifest = Path(tmp) / f"manifest-{n}.parquet"
            base = _child("baseline", root, manifest)
            first = _child("ingest", root, manifest)
            again = _child("ingest", root, manifest)  # re-ingest: hash only, no decode
            results.append({
                "files": n,
                "baseline_files_per_s": round(n / base["seconds"], 1),
                "ingest_files_per_s": round(n / first["seconds"], 1),
                "reingest_files_per_s": round(n / again["seconds"], 1),
                "ingest_over_baseline_time": round(first["seconds"] / base["seconds"], 2),
                "baseline_peak_rss_mb": round(base["peak_rss_mb"], 1),
                "ingest_peak_rss_mb": round(first["peak_rss_mb"], 1),
            })
    print(json.dumps({"benchmark": "ingest", "machine": platform.machine(), "python": platform.python_version(),
                      "image": f"{args.side}x{args.side} uint16 TIFF (zlib)", "results": results}, indent=2))


if __name__ == "__main__":
    main()
