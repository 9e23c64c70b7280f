"""QuPath GeoJSON on whole slides: export / import seconds and file size for many points on one slide.

A synthetic slide tiled as :func:`nucleate.slides.tile_grid` tiles it (``--cols`` × ``--rows`` tiles of 64 px at
0.5 µm/px on a 0.3 µm/px slide: 106.67 level-0 px, sub-pixel gaps and overlaps between neighbours), every tile
kept, ``--per-tile`` uniform random points on each. Timed (best of ``--repeat``):

* **slide**: :func:`nucleate.annotations.formats.to_qupath_slides` + ``json.dumps`` (one file, level-0 px, one
  MultiPoint per label) and ``json.loads`` + :func:`~nucleate.annotations.formats.from_qupath_slides` (each
  point located on its tile);
* **baseline**, same run, same points: the plain-image path, :func:`~nucleate.annotations.formats.to_qupath` +
  ``json.dumps`` per tile (one Point feature per point) and ``json.loads`` + :func:`from_qupath` per tile.

    python benchmarks/bench_qupath.py [--cols 50] [--rows 40] [--per-tile 50] [--repeat 2]

Prints JSON (seconds, points per second, bytes, slide / baseline ratios).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime

import numpy as np

from nucleate.annotations.formats import from_qupath, from_qupath_slides, to_qupath, to_qupath_slides
from nucleate.annotations.points import points_table
from nucleate.slides import Tile

LABELS = ["nucleus", "micronucleus"]


def best(call, repeat):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cols", type=int, default=50)
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--per-tile", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    w0 = 64 * 0.5 / 0.3
    tiles = {t.image_id: t for t in (Tile("s" * 64, round(c * w0), round(r * w0), w0, w0, 64, 0.5, 0, 1.0)
                                     for r in range(a.rows) for c in range(a.cols))}
    ids = np.repeat(np.array(list(tiles), object), a.per_tile)
    n = len(ids)
    table = points_table({"image_id": ids.tolist(), "x": rng.uniform(0, 64, n), "y": rng.uniform(0, 64, n),
                          "label": rng.choice(LABELS, n).tolist(), "annotator": "bench", "round": 1,
                          "origin": "manual", "created_at": datetime(2026, 12, 1, tzinfo=UTC)})
    sizes = {i: (64, 64) for i in tiles}

    t_exp, text = best(lambda: json.dumps(to_qupath_slides(table, tiles, LABELS)["s" * 64]), a.repeat)
    t_imp, res = best(lambda: from_qupath_slides([("bench", "s" * 64, json.loads(text))], tiles=tiles,
                                                 labels=LABELS), a.repeat)
    assert res.points.num_rows == n and not res.rejected, res.rejected[:3]
    err = float(np.abs(np.sort(res.points.column("x").to_numpy()) - np.sort(table.column("x").to_numpy())).max())

    b_exp, texts = best(lambda: {k: json.dumps(d) for k, d in to_qupath(table, LABELS).items()}, a.repeat)
    b_imp, bres = best(lambda: from_qupath([(k, k, json.loads(t)) for k, t in texts.items()], sizes=sizes,
                                           labels=LABELS), a.repeat)
    assert bres.points.num_rows == n
    out = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "python": platform.python_version(),
        "tiles": len(tiles), "points": n, "repeat": a.repeat,
        "slide": {"export_s": round(t_exp, 4), "import_s": round(t_imp, 4), "bytes": len(text),
                  "import_points_per_s": round(n / t_imp), "max_abs_x_error_px": err},
        "baseline_plain_images": {"export_s": round(b_exp, 4), "import_s": round(b_imp, 4),
                                  "bytes": sum(map(len, texts.values())), "import_points_per_s": round(n / b_imp)},
    }
    out["ratio_slide_over_baseline"] = {k: round(out["slide"][k] / out["baseline_plain_images"][k], 3)
                                        for k in ("export_s", "import_s", "bytes")}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
