"""Whole-slide prediction: megapixels/s and peak memory against slide size (memory must stay flat).

Generates square pyramidal TIFF slides (pink tissue with dark disk "nuclei", written tile by tile so the generator
never holds a slide either) of each ``--sizes`` px at 0.5 µm/px, and runs ``tasks.predict.run`` on each in a fresh
subprocess with a small random-weight student (the stage's cost structure, not a trained model's accuracy):
seconds, megapixels/s (tile pixels at ``target_mpp``) and peak RSS (``ru_maxrss``). Baseline in the same run: the
same student on the same slide read whole (level 0 as one image, ``segment_image`` once) for the sizes up to
``--whole-max``: its memory grows with the slide; the tiled run's should not.

Slide tiles are 448 px + 64 px overlap = 512 px windows = ``predict.window_px``: one forward pass per tile. (With
``tile_px + predict_overlap_px`` above ``window_px`` each tile's window is itself cut into several blended network
windows: correct, but about 4x the network work for 512 + 64.)

    python benchmarks/bench_wsi_predict.py [--sizes 2048 4096 8192] [--whole-max 4096] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

MPP = 0.5
TILE = 256  # TIFF tile side (px)
PITCH = 24  # disk grid pitch, level-0 px
RADIUS = 6  # disk radius, level-0 px
PINK, DARK = np.array([235, 160, 200], np.uint8), np.array([70, 30, 110], np.uint8)
SMALL = dict(width=8, depths=(1, 1, 1, 1), decoder_channels=(16, 16, 8, 8, 8), heatmap_channels=(8, 8, 8, 8, 4))
EXTRA = {"classes": ["nucleus", "micronucleus", "background"], "nucleus_radius_px": 6.0,
         "data_nucleus_radius_px": 6.0, "heatmap_trained": True, "supervision": "donuseg", "round": 1}

CHILD = """
import json, resource, sys, time
from pathlib import Path
mode, slide, model, out = sys.argv[1:5]
import torch
torch.set_num_threads(1)
from nucleate.config import PredictParams, SlidesParams
predict = PredictParams(device="cpu")
slides = SlidesParams(target_mpp=0.5, tile_px=448, tissue_threshold=0.1, predict_overlap_px=64)
t = time.perf_counter()
if mode == "tiled":
    from tasks import predict as stage
    report = stage.run(predict, ("nucleus",), model=model, images=slide, out=out, slides=slides)
    mpx, n = report.megapixels, report.instances
else:  # baseline: the whole level 0 as one image
    from nucleate.inference import segment_image
    from nucleate.models import load_model
    from nucleate.slides import open_slide
    with open_slide(slide) as s:
        w, h = s.dimensions
        image = s.read_level(0, 0, 0, w, h)
    seg = segment_image(load_model(model), image, predict, nucleus_radius_px=None)
    mpx, n = w * h / 1e6, len(seg.scores)
dt = time.perf_counter() - t
print(json.dumps({"seconds": round(dt, 2), "megapixels": round(mpx, 3), "megapixels_per_s": round(mpx / dt, 4),
                  "instances": n, "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
"""


def tile_pixels(x0: int, y0: int, side: int, d: int, size: int) -> np.ndarray:
    """uint8 RGB (side, side, 3) of the pattern at downsample ``d``, level px from (x0, y0): white outside the
    central tissue square (an eighth of ``size`` from each edge), inside pink with a disk of ``RADIUS`` level-0 px
    at every ``PITCH`` grid point (jittered by a fixed function of the grid index)."""
    y, x = (np.mgrid[0:side, 0:side] + [[[y0]], [[x0]]] + 0.5) * d  # level-0 coordinates of the pixel centres
    i, j = np.floor(x / PITCH), np.floor(y / PITCH)
    jx = ((i * 7 + j * 13) % 9 - 4).astype(np.float64)
    jy = ((i * 11 + j * 5) % 9 - 4).astype(np.float64)
    cx, cy = (i + 0.5) * PITCH + jx, (j + 0.5) * PITCH + jy
    inside = (x - cx) ** 2 + (y - cy) ** 2 <= RADIUS**2
    tissue = (np.minimum(x, y) >= size / 8) & (np.maximum(x, y) < size - size / 8)
    out = np.full((side, side, 3), 255, np.uint8)
    out[tissue] = PINK
    out[tissue & inside] = DARK
    return out


def write_slide(path: Path, size: int) -> None:
    """A ``size`` px square pyramidal TIFF (levels 1, 2, 4, 8, 16 as SubIFDs), written tile by tile."""
    import tifffile

    downsamples = [d for d in (2, 4, 8, 16) if size // d >= TILE]

    def tiles(d: int):
        n = size // d
        for ty in range(0, n, TILE):
            for tx in range(0, n, TILE):
                yield tile_pixels(tx, ty, TILE, d, size)

    opts = {"tile": (TILE, TILE), "photometric": "rgb", "compression": "zlib", "dtype": np.uint8}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        res = {"resolution": (1e4 / MPP,) * 2, "resolutionunit": "CENTIMETER"}
        tw.write(tiles(1), shape=(size, size, 3), subifds=len(downsamples), **opts, **res)
        for d in downsamples:
            tw.write(tiles(d), shape=(size // d, size // d, 3), subfiletype=1, **opts,
                     resolution=(1e4 / (MPP * d),) * 2, resolutionunit="CENTIMETER")


def _child(mode: str, slide: Path, model: Path, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", CHILD, mode, str(slide), str(model), str(out)], check=True,
                         capture_output=True, text=True, env=env)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--whole-max", type=int, default=4096, help="largest slide also run whole (baseline)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    import torch

    from nucleate.models import build_student, save_model

    torch.manual_seed(0)
    model = build_student("resnet", 3, **SMALL).eval()
    with torch.no_grad():
        model.seg_head.weight.mul_(30)
        model.heat_head.weight.mul_(30)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_model(tmp / "model", model, extra=EXTRA)
        for size in sorted(args.sizes):
            slide = tmp / f"slide{size}.tif"
            write_slide(slide, size)
            row = {"size_px": size, "file_mb": round(slide.stat().st_size / 2**20, 1),
                   "tiled": _child("tiled", slide, tmp / "model", tmp / f"pred{size}")}
            if size <= args.whole_max:
                row["whole"] = _child("whole", slide, tmp / "model", tmp / "unused")
            results.append(row)
            print(json.dumps(row), file=sys.stderr)
    first = results[0]["tiled"]["peak_rss_mb"]
    for row in results:
        row["tiled_rss_vs_smallest"] = round(row["tiled"]["peak_rss_mb"] / first, 3)
        if "whole" in row:
            row["whole_rss_vs_tiled"] = round(row["whole"]["peak_rss_mb"] / row["tiled"]["peak_rss_mb"], 3)
    doc = {"benchmark": "wsi_predict", "machine": {"cpu": platform.processor() or platform.machine(),
                                                  "cores": os.cpu_count(), "python": platform.python_version(),
                                                  "torch": torch.__version__},
           "student": "resnet width 8 (random weights), CPU, 1 thread", "slides_params":
           {"target_mpp": 0.5, "tile_px": 448, "predict_overlap_px": 64, "window_px": 512}, "results": results}
    text = json.dumps(doc, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
