"""Scale-out of the per-image work on Dask: images/s of the pseudo-mask step, in-process vs 1 vs 2 workers.

    .venv/bin/python benchmarks/bench_scaleout.py [--sample DIR] [--repeat 1] [--noop 400] [--out FILE]

The per-image step is :func:`tasks.pseudomasks.mask_image` (read the image, Qu et al. Voronoi + cluster labels
from its ground-truth points, write its 4 maps into a staging folder, return its index row) on every annotated
sample image (pool + gold, ``--repeat`` times over), run through the stage's mapper (:mod:`tasks._map`):

* ``sequential``: :data:`tasks._map.SEQUENTIAL` in this process;
* ``dask_1`` / ``dask_2``: :class:`flows.dask_map.DaskMapper` on a ``LocalCluster`` of 1 / 2 worker processes
  (one thread each, 127.0.0.1, what ``NUCLEATE_DASK=local:N`` starts); each is warmed up first (the workers
  import numpy/skimage and run one image), so the figures are steady-state throughput, and the cluster's start
  time is reported apart (``start_s``).

``speedup_2_vs_1`` = images/s with 2 workers / with 1; ``dask_1_vs_sequential`` = the price of shipping each
image's task to another process. ``overhead``: tiny no-op tasks per second through each mapper (the fixed cost
per task: scheduling, pickling, the result round trip) and its inverse in milliseconds. ``cpu_s_per_image``: CPU
seconds of the step per image, measured in the thread that ran it (it stays flat when the work moves to
workers; wall-clock ratios also depend on what else the machine runs: ``load_1min_before``). BLAS/OpenMP are
pinned to one thread everywhere, so one worker = one core. Prints JSON; ``--out`` also writes it there.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from flows.dask_map import DaskMapper, local_cluster_kwargs  # noqa: E402
from nucleate.annotations import points_xy, rows_by_image  # noqa: E402
from nucleate.config import load_params  # noqa: E402
from nucleate.io import content_id, read_table  # noqa: E402
from tasks._map import SEQUENTIAL  # noqa: E402
from tasks.pseudomasks import MaskItem, MaskSpec, mask_image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def noop(item):
    """The no-op task of the overhead figure."""
    return item


def timed(fn, item) -> float:
    """Run ``fn(item)``; the CPU seconds of the thread that ran it (a worker's own clock; the worker's
    communication threads are not counted)."""
    started = time.thread_time()
    fn(item)
    return time.thread_time() - started


def _items(sample: Path, repeat: int) -> list[tuple[str, MaskItem]]:
    """(key, item) for every sample image with points, ``repeat`` times (distinct keys)."""
    points = read_table("points", sample / "points.parquet")
    xy, rows_of = points_xy(points), rows_by_image(points)
    paths = {content_id(p): p.relative_to(sample / "images").as_posix()
             for p in sorted((sample / "images").rglob("*.tif"))}
    base = [MaskItem(i, paths[i], paths[i].startswith("gold/"), xy[rows_of[i]], np.asarray(rows_of[i]),
                     {"image_id": i, "path": paths[i]})
            for i in sorted(rows_of, key=lambda i: paths[i]) if i in paths]
    return [(f"{r}-{item.image_id}", item) for r in range(repeat) for item in base]


def _drain(mapper, fn, items) -> tuple[float, int, float]:
    """(wall seconds, failures, CPU seconds summed over the tasks) to run ``timed(fn)`` over ``items``."""
    started = time.perf_counter()
    outcomes = list(mapper.map(functools.partial(timed, fn), items))
    cpu = sum(o.value for o in outcomes if o.ok)
    return time.perf_counter() - started, sum(1 for o in outcomes if not o.ok), cpu


def _figures(n: int, seconds: float, failures: int, cpu: float) -> dict:
    return {"seconds": round(seconds, 2), "images_per_s": round(n / seconds, 3), "failures": failures,
            "cpu_s_per_image": round(cpu / n, 3)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sample", type=Path, help="sample layout; built in a temp dir if omitted")
    ap.add_argument("--repeat", type=int, default=1, help="times over the annotated sample images")
    ap.add_argument("--noop", type=int, default=400, help="no-op tasks of the overhead figure")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    from distributed import Client, LocalCluster

    params = load_params(REPO / "params.yaml")
    res: dict = {"machine": f"{os.cpu_count()}-core {platform.machine()} CPU, Python {platform.python_version()}",
                 "step": "tasks.pseudomasks.mask_image (pseudomask.method "
                         f"{params.pseudomask.method}, params.yaml), BLAS 1 thread"}
    with tempfile.TemporaryDirectory() as tmp:
        sample = args.sample
        if sample is None:
            from tasks import sample_data

            sample = Path(tmp) / "sample"
            sample_data.run(sample, install=False)
        items = _items(sample, args.repeat)
        staging = Path(tmp) / "staging"
        staging.mkdir()
        spec = MaskSpec(params.pseudomask, params.seed, str(sample / "images"), str(staging), None,
                        str(sample / "points.parquet"))
        fn = functools.partial(mask_image, spec)
        noops = [(str(k), k) for k in range(args.noop)]
        res["images"] = len(items)
        res["megapixels"] = round(sum(_pixels(sample / "images" / it.path) for _, it in items) / 1e6, 2)
        _drain(SEQUENTIAL, fn, items[:1])  # imports, caches
        load = os.getloadavg()[0]
        res["sequential"] = {**_figures(len(items), *_drain(SEQUENTIAL, fn, items)),
                             "load_1min_before": round(load, 2)}
        seconds, _, _ = _drain(SEQUENTIAL, noop, noops)
        res.setdefault("overhead", {})["sequential"] = _overhead(len(noops), seconds)
        for workers in (1, 2):
            started = time.perf_counter()
            with LocalCluster(**local_cluster_kwargs(workers)) as cluster, \
                    Client(cluster, set_as_default=False) as client:
                start_s = time.perf_counter() - started
                mapper = DaskMapper(client)
                _drain(mapper, fn, items[: 2 * workers])  # warm-up: every worker imports and runs one image
                load = os.getloadavg()[0]
                res[f"dask_{workers}"] = {**_figures(len(items), *_drain(mapper, fn, items)),
                                          "start_s": round(start_s, 2), "load_1min_before": round(load, 2)}
                _drain(mapper, noop, noops[:20])
                seconds, _, _ = _drain(mapper, noop, noops)
                res["overhead"][f"dask_{workers}"] = _overhead(len(noops), seconds)
    res["speedup_2_vs_1"] = round(res["dask_2"]["images_per_s"] / res["dask_1"]["images_per_s"], 3)
    res["dask_1_vs_sequential"] = round(res["dask_1"]["images_per_s"] / res["sequential"]["images_per_s"], 3)
    res["dask_2_vs_sequential"] = round(res["dask_2"]["images_per_s"] / res["sequential"]["images_per_s"], 3)
    res["load_1min"] = round(os.getloadavg()[0], 2)
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return res


def _pixels(path: Path) -> int:
    from nucleate.io import read_image

    shape = read_image(path).shape
    return int(shape[0] * shape[1])


def _overhead(n: int, seconds: float) -> dict:
    return {"tasks": n, "tasks_per_s": round(n / seconds, 1), "ms_per_task": round(1000 * seconds / n, 3)}


if __name__ == "__main__":
    main()
