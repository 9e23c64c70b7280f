"""Pseudo-mask throughput (megapixels per second per core) on the real sample images.

    .venv/bin/python benchmarks/bench_pseudomask.py [--sample DIR] [--baseline-images 3]

Single-threaded (BLAS/OpenMP pinned to one thread), so MP/s is per core; ``*_mp_per_s`` uses wall
time, ``*_mp_per_cpu_s`` this process's CPU time (robust to other jobs sharing the machine). For each method it runs
``from_points`` with the GT centroids of every pool image (params.yaml settings) and reports
total megapixels / total seconds; also ``PRESETS["qu2019"]`` (per-cell refinement, k-means on every
pixel) and a 2x2 mosaic of four real images (2.7 MP, ~470 points) to show the cost stays linear in
pixels. Baseline, same run and images: Qu et al.'s structure for the cluster-label refinement - a
Python loop over Voronoi cells, each doing full-image binary dilation / hole filling / erosion with
skimage (``create_cluster_label`` in WeaklySegPointAnno).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402
from skimage import morphology  # noqa: E402

from nucleate.annotations import centroids_xy  # noqa: E402
from nucleate.config import load_params  # noqa: E402
from nucleate.io import read_image, read_labels  # noqa: E402
from nucleate.pseudomask import METHODS, PRESETS, from_points  # noqa: E402
from nucleate.pseudomask.geometry import cell_edges, seed_pixels, voronoi  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def qu_refinement_loop(nuclei: np.ndarray, cells: np.ndarray, dilate: int, erode: int) -> np.ndarray:
    """The per-cell loop of Qu et al.'s ``create_cluster_label`` (full-image ops per cell)."""
    interior = np.where(cell_edges(cells), 0, cells)
    grown_cells = morphology.dilation(interior, morphology.disk(2))
    refined = np.zeros(nuclei.shape, dtype=bool)
    for i in np.unique(grown_cells[grown_cells > 0]):
        nucleus_i = (grown_cells == i) & nuclei
        nucleus_i = ndi.binary_dilation(nucleus_i, morphology.disk(dilate))
        nucleus_i = ndi.binary_fill_holes(nucleus_i)
        refined |= ndi.binary_erosion(nucleus_i, morphology.disk(erode))
    return refined


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", type=Path, help="sample layout; built in a temp dir if omitted")
    ap.add_argument("--baseline-images", type=int, default=3, help="pool images the slow baseline runs on")
    args = ap.parse_args(argv)
    cfg = load_params(REPO / "params.yaml")
    params, seed = cfg.pseudomask, cfg.seed
    with tempfile.TemporaryDirectory() as tmp:
        sample = args.sample
        if sample is None:
            from tasks import sample_data

            sample = Path(tmp) / "sample"
            sample_data.run(sample, install=False)
        data = []
        for path in sorted((sample / "images" / "pool").glob("*.tif")):
            gt = read_labels(sample / "masks" / "pool" / path.name)
            data.append((read_image(path), centroids_xy(gt)[1]))
    mp = sum(im.shape[0] * im.shape[1] for im, _ in data) / 1e6
    res: dict = {"machine": f"{os.cpu_count()}-core {platform.machine()} CPU, Python {platform.python_version()} "
                 "(1 thread)", "images": len(data), "megapixels": round(mp, 2),
                 "points": int(sum(len(x) for _, x in data)), "params": dataclasses.asdict(params)}
    from_points(*data[0], params=params, seed=seed)  # warm-up (imports, allocator)
    runs = {m: dataclasses.replace(params, method=m) for m in METHODS} | {"qu2019": PRESETS["qu2019"]}
    for name, p in runs.items():
        t0, c0 = time.perf_counter(), time.process_time()
        for image, points in data:
            from_points(image, points, params=p, seed=seed)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        res[f"{name}_mp_per_s"] = round(mp / dt, 2)  # wall clock (other jobs on the machine slow it)
        res[f"{name}_mp_per_cpu_s"] = round(mp / dc, 2)  # per second of this process's CPU time
        res[f"{name}_s_per_image"] = round(dt / len(data), 3)

    # 2x2 mosaic of four same-size real images: 4x the pixels and points
    same = [d for d in data if d[0].shape == data[0][0].shape and d[0].dtype == data[0][0].dtype][:4]
    h, w = same[0][0].shape
    mosaic = np.block([[same[0][0], same[1][0]], [same[2][0], same[3][0]]])
    pts = np.concatenate([same[k][1] + [(k % 2) * w, (k // 2) * h] for k in range(4)])
    t0 = time.perf_counter()
    from_points(mosaic, pts, params=params, seed=seed)
    dt = time.perf_counter() - t0
    res["mosaic"] = {"shape": list(mosaic.shape), "points": len(pts), "seconds": round(dt, 3),
                     "mp_per_s": round(mosaic.size / 1e6 / dt, 2)}

    # baseline: Qu's per-cell refinement loop vs ours, on the same images
    dil, ero = max(1, round(params.px("dilate"))), max(1, round(params.px("erode")))
    t_ours = t_loop = 0.0
    sub = data[: args.baseline_images]
    for image, points in sub:
        t0 = time.perf_counter()
        from_points(image, points, params=params, seed=seed)
        t_ours += time.perf_counter() - t0
        rows, cols, _ = seed_pixels(points, image.shape)
        cells, _ = voronoi(rows, cols, image.shape)
        nuclei = from_points(image, points, "cluster", params=params, seed=seed).instances > 0  # stand-in mask
        t0 = time.perf_counter()
        qu_refinement_loop(nuclei, cells, dil, ero)
        t_loop += time.perf_counter() - t0
    sub_mp = sum(im.size for im, _ in sub) / 1e6
    res["baseline"] = {
        "what": "Qu et al. per-cell refinement loop alone (skimage, full-image ops per Voronoi cell)",
        "images": len(sub), "megapixels": round(sub_mp, 2),
        "loop_only_mp_per_s": round(sub_mp / t_loop, 3),
        "ours_voronoi_cluster_whole_mp_per_s": round(sub_mp / t_ours, 2),
        "speedup": round(t_loop / t_ours, 1),
    }
    res["target_mp_per_s_per_core"] = 2.0
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
