"""Whole-slide ingest and tile reads: tiles/s and peak memory vs slide size.

Slides: the real CC0 Aperio SVS (``make setup`` installs it; 2220 x 2967 px, 0.499 µm/px, JPEG) and generated
pyramidal TIFFs (JPEG tiles of 256 px, 0.25 µm/px = 40x, levels at downsample 4, 16, 64 like an Aperio SVS) of
increasing side, written tile by tile so that generating them needs little memory. Each measurement runs in a fresh
subprocess, so its ``peak_rss_mb`` (``ru_maxrss``) is that step's own peak.

* ``ingest``: open + tissue mask (one thumbnail read at ``thumbnail_mpp``) + tile grid at the default params
  (512 px at 0.5 µm/px): grid tiles/s, no tile pixels read.
* ``read_0.5`` / ``read_1.0``: :func:`read_tile` of kept tiles at target_mpp 0.5 and 1.0 µm/px (at most
  ``--max-reads`` of them, evenly spaced): tiles/s.
* baseline ``naive``: the same mask from a whole level-0 read (no pyramid), as a per-slide "load it and threshold
  it" would do; only for sides up to ``--naive-max``.

    python benchmarks/bench_slides.py [--sides 4096 16384 32768] > benchmarks/results/bench_slides.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MPP = 0.25  # level-0 µm per px of the generated slides
DOWNSAMPLES = (4, 16, 64)  # pyramid levels kept while the level is at least 256 px wide
TILE = 256  # TIFF tile side, px

CHILD = r"""
import dataclasses, json, resource, sys, time
import numpy as np
from nucleate.config import SlidesParams
from nucleate.slides import open_slide, read_tile, tile_grid, tissue_mask
from nucleate.slides.tissue import _shrink, tissue_from_rgb
# the lazy imports of the timed code, done before the clock starts
import scipy.ndimage, skimage.color, skimage.filters, skimage.morphology, skimage.transform  # noqa: E401,F401
import tiffslide  # noqa: F401

mode, path, max_reads = sys.argv[1], sys.argv[2], int(sys.argv[3])
params = SlidesParams()
out = {"mode": mode}
t = time.perf_counter()
with open_slide(path) as s:
    if mode == "ingest":
        tissue = tissue_mask(s, params)
        kept = tile_grid(s, tissue, params)
        grid = tile_grid(s, tissue, dataclasses.replace(params, tissue_threshold=0.0))
        dt = time.perf_counter() - t
        out |= {"grid_tiles": len(grid), "kept_tiles": len(kept), "tissue_fraction": round(tissue.fraction, 4),
                "mask_shape": list(tissue.mask.shape), "seconds": dt, "tiles_per_s": len(grid) / dt}
    elif mode == "naive":
        w, h = s.dimensions
        image = s.read_level(0, 0, 0, w, h)  # the whole level 0 in memory
        factor = max(1, round(params.thumbnail_mpp / min(s.mpp)))
        mask = tissue_from_rgb(_shrink(image, factor), params, (s.mpp[0] * factor, s.mpp[1] * factor))
        dt = time.perf_counter() - t
        grid = tile_grid(s, tissue_mask(s, params), dataclasses.replace(params, tissue_threshold=0.0))
        out |= {"grid_tiles": len(grid), "tissue_fraction": round(float(mask.mean()), 4), "seconds": dt,
                "tiles_per_s": len(grid) / dt}
    else:  # read_<target mpp>
        p = dataclasses.replace(params, target_mpp=float(mode.split("_")[1]))
        tiles = tile_grid(s, tissue_mask(s, p), p)
        tiles = [tiles[i] for i in np.unique(np.linspace(0, len(tiles) - 1, min(max_reads, len(tiles))).astype(int))]
        t = time.perf_counter()
        total = 0
        for tile in tiles:
            total += int(read_tile(s, tile)[0, 0, 0])
        dt = time.perf_counter() - t
        out |= {"tiles": len(tiles), "level": tiles[0].level, "seconds": dt, "tiles_per_s": len(tiles) / dt}
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def _child(mode: str, path: Path, max_reads: int) -> dict:
    run = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(max_reads)], capture_output=True,
                         text=True)
    if run.returncode != 0:
        return {"mode": mode, "error": (run.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def _tissue_tile(side: int, ds: int, ty: int, tx: int, noise: np.ndarray) -> np.ndarray:
    """One TILE x TILE px RGB tile of level ``ds`` of a slide of ``side`` level-0 px: white glass, and an H&E-like
    pink texture inside two ellipses (about 40 % of the area); the same picture at every level."""
    y = ((ty * TILE + np.arange(TILE) + 0.5) * ds / side)[:, None]  # 0..1 across the slide
    x = ((tx * TILE + np.arange(TILE) + 0.5) * ds / side)[None, :]
    inside = ((x - 0.35) / 0.22) ** 2 + ((y - 0.5) / 0.42) ** 2 < 1
    inside |= ((x - 0.75) / 0.15) ** 2 + ((y - 0.4) / 0.3) ** 2 < 1
    tile = np.full((TILE, TILE, 3), 243, np.uint8)
    if inside.any():
        pink = np.clip(np.array([200, 120, 170]) + noise, 0, 255).astype(np.uint8)
        tile[inside] = pink[inside]
    return tile


def write_generated_slide(path: Path, side: int) -> Path:
    """A pyramidal JPEG TIFF of ``side`` x ``side`` level-0 px at :data:`MPP`, written tile by tile (memory: a few
    tiles, however large the slide)."""
    import tifffile

    rng = np.random.default_rng(0)
    noise = rng.normal(0, 25, size=(TILE, TILE, 3)) - 60 * (rng.random((TILE, TILE, 1)) < 0.15)  # "nuclei"
    levels = [1, *[d for d in DOWNSAMPLES if side // d >= TILE]]
    opts = {"tile": (TILE, TILE), "photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": 85},
            "dtype": np.uint8}

    def tiles(ds: int):
        n = -(-(side // ds) // TILE)
        for ty in range(n):
            for tx in range(n):
                yield _tissue_tile(side, ds, ty, tx, noise)

    with tifffile.TiffWriter(path, bigtiff=side > 16384) as tw:
        for k, ds in enumerate(levels):
            size = side // ds
            res = {"resolution": (1e4 / (MPP * ds),) * 2, "resolutionunit": "CENTIMETER"}
            extra = {"subifds": len(levels) - 1} if k == 0 else {"subfiletype": 1}
            tw.write(tiles(ds), shape=(size, size, 3), **opts, **res, **extra)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[4096, 16384, 32768], help="generated slide sides")
    parser.add_argument("--naive-max", type=int, default=16384, help="largest side for the whole-level-0 baseline")
    parser.add_argument("--max-reads", type=int, default=60, help="read_tile calls per slide and target")
    args = parser.parse_args()
    from nucleate.slides.sample import sample_slide_path

    slides = []
    with tempfile.TemporaryDirectory(prefix="bench-slides-") as tmp:
        targets: list[tuple[str, Path, int | None, float]] = []
        cc0 = sample_slide_path()
        if cc0.is_file():
            targets.append(("cc0_svs", cc0, None, 0.0))
        else:
            print(f"note: {cc0} missing (run `make setup`); generated slides only", file=sys.stderr)
        for side in sorted(args.sides):
            t = time.perf_counter()
            path = write_generated_slide(Path(tmp) / f"gen_{side}.tif", side)
            targets.append((f"generated_{side}", path, side, time.perf_counter() - t))
        for name, path, side, gen_s in targets:
            modes = ["ingest", "read_0.5", "read_1.0"]
            if side is None or side <= args.naive_max:
                modes.append("naive")
            row = {"slide": name, "file_mb": round(path.stat().st_size / 2**20, 1)}
            if side is not None:
                row |= {"side_px": side, "level0_mpix": side * side / 1e6, "generate_s": round(gen_s, 1)}
            row["runs"] = {m: _child(m, path, args.max_reads) for m in modes}
            print(json.dumps(row), file=sys.stderr)
            slides.append(row)
    print(json.dumps({
        "benchmark": "bench_slides",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "load_avg_1m": round(os.getloadavg()[0], 2)},
        "params": "params.yaml slides defaults (thumbnail_mpp 4, tile_px 512, target_mpp 0.5, threshold 0.25)",
        "slides": slides,
    }, indent=2))


if __name__ == "__main__":
    main()
