"""Ingest of whole-slide images: seconds and peak RSS per slide, against two baselines measured in the same run.

A synthetic pyramidal TIFF (``--side`` level-0 px at 0.25 µm/px, an ellipse of textured "tissue" on white,
levels 2x / 4x / 8x / 16x, 256 px zlib tiles) is copied ``--slides`` times (distinct bytes) into a folder. Each
measurement runs in a fresh subprocess (peak RSS: its own VmHWM; libraries are imported before the clock starts):

* ``hash``: the content id of every slide file (the floor: ingest must read every byte once);
* ``ingest``: ``tasks.ingest.run`` with the default ``slides`` params (tissue mask once per slide, tile grid,
  manifest rows; no tile pixels read);
* ``read_tiles``: what pre-extracting the tiles would cost at the least: the same tissue mask and grid, then
  every kept tile's pixels read (:func:`nucleate.slides.read_tile`), not even written out.

Peak RSS of ``ingest`` with 1 and with ``--slides`` slides shows memory does not grow with the number of slides.

    python benchmarks/bench_slide_ingest.py [--side 8192] [--slides 3] [--out benchmarks/results/x.json]
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

CHILD = """
import json, sys, time
from pathlib import Path
import scipy.ndimage, skimage.color, skimage.filters, skimage.measure, skimage.morphology, skimage.transform, tiffslide
from nucleate.config import SlidesParams
from nucleate.io import content_id
from nucleate.slides import open_slide, read_tile, tile_grid, tissue_mask
from tasks import ingest
mode, root, manifest = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
slides = sorted(root.glob("*.tif"))
t = time.perf_counter()
tiles = 0
if mode == "hash":
    for p in slides:
        content_id(p)
elif mode == "read_tiles":
    for p in slides:
        with open_slide(p, slide_id=content_id(p)) as s:
            grid = tile_grid(s, tissue_mask(s, SlidesParams()), SlidesParams())
            for tile in grid:
                read_tile(s, tile)
            tiles += len(grid)
else:
    tiles = ingest.run(SlidesParams(), folder=root, manifest=manifest).tiles
dt = time.perf_counter() - t
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))  # this process's peak
print(json.dumps({"slides": len(slides), "tiles": tiles, "seconds": round(dt, 3),
                  "peak_rss_mb": round(int(hwm.split()[1]) / 1024, 1)}))
"""


def _child(mode: str, root: Path, manifest: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                        str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(root), str(manifest)], check=True,
                         capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_synthetic_slide(path: Path, side: int, seed: int, mpp: float = 0.25) -> None:
    """A pyramidal RGB TIFF, ``side`` x ``side`` level-0 px: an ellipse of textured pink tissue on white."""
    import tifffile

    rng = np.random.default_rng(seed)
    y, x = np.ogrid[:side, :side]
    inside = ((x - side / 2) / (0.42 * side)) ** 2 + ((y - side / 2) / (0.3 * side)) ** 2 <= 1.0
    image = np.full((side, side, 3), 255, np.uint8)
    texture = rng.integers(0, 40, (side // 8, side // 8), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    for c, base in enumerate((200, 120, 180)):
        channel = image[..., c]
        channel[inside] = (base - texture)[inside]
    opts = {"tile": (256, 256), "photometric": "rgb", "compression": "zlib"}
    downsamples = (2, 4, 8, 16)
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, subifds=len(downsamples), resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER",
                 **opts)
        for d in downsamples:
            tw.write(image[::d, ::d], subfiletype=1, resolution=(1e4 / (mpp * d),) * 2, resolutionunit="CENTIMETER",
                     **opts)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8192, help="level-0 side of each slide, px (0.25 µm/px)")
    parser.add_argument("--slides", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        one.mkdir()
        many.mkdir()
        for k in range(args.slides):
            write_synthetic_slide(many / f"s{k}.tif", args.side, seed=k)
        os.link(many / "s0.tif", one / "s0.tif")
        size_mb = sum(p.stat().st_size for p in many.glob("*.tif")) / 2**20
        runs = {
            "hash": _child("hash", many, Path(tmp) / "h.parquet"),
            "ingest": _child("ingest", many, Path(tmp) / "m.parquet"),
            "ingest_one_slide": _child("ingest", one, Path(tmp) / "m1.parquet"),
            "read_tiles": _child("read_tiles", many, Path(tmp) / "r.parquet"),
        }
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "side_px": args.side, "slides": args.slides, "files_mb": round(size_mb, 1),
        "runs": runs,
        "ingest_over_hash": round(runs["ingest"]["seconds"] / runs["hash"]["seconds"], 2),
        "read_tiles_over_ingest": round(runs["read_tiles"]["seconds"] / runs["ingest"]["seconds"], 2),
        "seconds_per_slide": round(runs["ingest"]["seconds"] / args.slides, 3),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
