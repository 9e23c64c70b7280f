"""Speed of nucleate.metrics on a 1000x1000 image with 1,000 instances, vs a naive per-instance loop.

    .venv/bin/python benchmarks/bench_metrics.py [--repeats 5]

Prints JSON: seconds per call (median of ``repeats``) for ``segmentation_scores`` (Dice + AJI +
object Dice + PQ from one overlap table), ``aji``, ``panoptic_quality``, ``detection_f1`` on 1,000
points, and the baseline (``naive_metrics.py``: HoVer-Net-style loop over instances with full-image
masks) for AJI and PQ, measured once in the same run; results agree to 1e-9.
Single-threaded (BLAS/OpenMP pinned to one thread) so the figure is per core.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from skimage.draw import disk  # noqa: E402

from nucleate.metrics import aji, detection_f1, panoptic_quality, segmentation_scores  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from naive_metrics import naive_aji, naive_pq  # noqa: E402


def synthetic(n: int = 1000, size: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True/pred label images with ``n`` disks (r 8-14 px, later ones overwrite overlaps) and a
    prediction that shifts, resizes, drops 5 % and adds 5 % spurious disks; plus the true centres."""
    rng = np.random.default_rng(seed)
    true = np.zeros((size, size), np.int32)
    pred = np.zeros((size, size), np.int32)
    centres = rng.uniform(10, size - 10, (n, 2))
    for k, (r, c) in enumerate(centres, 1):
        rad = rng.uniform(8, 14)
        true[disk((r, c), rad, shape=true.shape)] = k
        if rng.random() > 0.05:
            dr, dc = rng.normal(0, 2, 2)
            pred[disk((r + dr, c + dc), rad * rng.uniform(0.8, 1.2), shape=pred.shape)] = 5000 + k
    for k, (r, c) in enumerate(rng.uniform(10, size - 10, (n // 20, 2)), 1):
        pred[disk((r, c), 10, shape=pred.shape)] = 20000 + k
    return true, pred, centres


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    true, pred, centres = synthetic()
    n_true, n_pred = len(np.unique(true)) - 1, len(np.unique(pred)) - 1
    rng = np.random.default_rng(1)
    pred_points = centres + rng.normal(0, 2, centres.shape)
    res: dict = {"machine": "2-core x86_64 CPU, 24 GB, Python 3.11 (1 thread)", "image": "1000x1000",
                 "n_true": n_true, "n_pred": n_pred}
    t, scores = timed(lambda: segmentation_scores(true, pred), args.repeats)
    res["segmentation_scores_s"] = round(t, 4)
    res["scores"] = {k: round(v, 4) for k, v in scores.as_dict().items()}
    res["aji_s"] = round(timed(lambda: aji(true, pred), args.repeats)[0], 4)
    res["panoptic_quality_s"] = round(timed(lambda: panoptic_quality(true, pred), args.repeats)[0], 4)
    res["detection_f1_1000_points_s"] = round(timed(lambda: detection_f1(centres, pred_points, 6.0),
                                                     args.repeats)[0], 4)
    t_aji, ref_aji = timed(lambda: naive_aji(true, pred), 1)
    t_pq, ref_pq = timed(lambda: naive_pq(true, pred), 1)
    assert abs(ref_aji - scores.aji) < 1e-9 and abs(ref_pq[2] - scores.pq.pq) < 1e-9, "baseline disagrees"
    res["baseline_naive_aji_s"] = round(t_aji, 3)
    res["baseline_naive_pq_s"] = round(t_pq, 3)
    res["speedup_aji"] = round(t_aji / res["aji_s"], 1)
    res["speedup_pq"] = round(t_pq / res["panoptic_quality_s"], 1)
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
