"""Selection speed and memory: PCoreSet (incremental greedy k-center) vs a naive recompute and the bandwidth bound.

Prints one JSON document. For each (N, C) with k picks, in a fresh subprocess per implementation:

* ``pcoreset`` — :func:`nucleate.selection.select` (numpy backend; data passed as a float32 Fortran-ordered
  array, so no copy), and ``pcoreset_torch_cpu`` (torch backend on CPU; same picks).
* ``pcoreset_numba`` — the same call with ``backend="numba"`` (one fused multi-threaded pass per pick; same picks),
  timed after a warm-up call on a small input (JIT compile or cache load: ``warmup_s``).
* ``pcoreset_c_order`` (N = 1e6, C = 50 only) — the same call on a C-ordered array: includes the one-off
  float32 column-major conversion copy.
* ``naive`` — a straightforward NumPy implementation that recomputes the distances from every row to every
  centre at each pick (``|x|² + |c|² − 2 x·c`` with a BLAS matmul, N × m matrix), as the PCoreSet reference code
  does with ``torch.cdist``. Stopped when its projected total exceeds 2 × ``--naive-limit`` or it has run that
  long (time per pick grows linearly with the number of centres m: a + b·m fitted on the picks so far).
* ``bound`` — k passes over N × C float32 at the memory bandwidth of a large NumPy copy measured in the same
  subprocess (STREAM convention: bandwidth = 2 × bytes copied / time; best of 3 copies of 256 MiB).

``cpu_s`` (process CPU time) next to ``wall_s`` shows how much other jobs on the machine slowed a run down: the
numpy path is single-threaded, so cpu_s ≈ wall_s on an idle machine.

Peak memory: VmHWM of the subprocess, reset (``/proc/self/clear_refs``) after the data are generated, so
``peak_extra_mib`` is what the selection itself added on top of the data.

``--vs-blas`` (issue 12, item 6) instead compares, at each (N, C) given (default N = 1e6, C = 50, k = 1,000), the
k-center backends with ``blas``: the plain BLAS formulation of the same incremental update
(``|p|² − 2 p·c + |c|²`` with one float32 matrix-vector product per pick on the same Fortran-ordered array, then
``np.minimum`` into the running minima and ``np.argmax``; row norms computed once). ``blas`` runs first and last
(the machine is shared: the two runs bracket the others) and the ratios are against their mean. Also
``numba_1thread`` (``NUMBA_NUM_THREADS=1``: on a shared machine a 2-thread pass waits for its slower thread at every
pick) and numba's first-call cost in fresh subprocesses: with an empty cache (``compile_s``: JIT compile + writing
the cache) and then with that cache (``cached_first_call_s``). Picks are compared by digest with the numpy backend.

Usage: ``python benchmarks/bench_select.py [--sizes 10000,100000,1000000] [--classes 10,50] [--k 1000]``;
``nice python benchmarks/bench_select.py --vs-blas > benchmarks/results/bench_select_vs_blas.json`` (≈ 4 min on the
2-core machine).
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

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _hwm_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM"):
                return int(line.split()[1])
    return -1


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return -1


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def copy_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 3) -> float:
    """Bytes/s of a large NumPy copy, counting read + write (STREAM 'copy' convention); best of ``repeats``."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def make_probs(n: int, c: int, seed: int = 0) -> np.ndarray:
    """(n, c) float32 Fortran-ordered probability rows (Dirichlet(1)), built without an (n, c) float64 copy."""
    rng = np.random.default_rng(seed)
    cols = rng.standard_gamma(1.0, size=(c, n), dtype=np.float32)
    cols /= cols.sum(axis=0, dtype=np.float32)
    return cols.T


def naive_kcenter(probs: np.ndarray, k: int, time_limit: float) -> tuple[np.ndarray, dict]:
    """Recompute-all-centres greedy k-center; same cold start rule as pcoreset.

    Stops early when it would not finish: every 50 picks the time per pick is fitted as a + b·m (m centres)
    and the rest projected; it stops when the projection exceeds 2 × ``time_limit`` or it has run
    ``time_limit`` seconds.
    """
    p = np.ascontiguousarray(probs)
    sq = np.einsum("ij,ij->i", p, p)
    mean = p.mean(axis=0, dtype=np.float64).astype(np.float32)
    picks = [int(np.argmax(((p - mean) ** 2).sum(axis=1)))]
    t0 = time.perf_counter()
    per_pick: list[float] = []
    while len(picks) < k:
        t1 = time.perf_counter()
        centres = p[picks]
        d = sq[:, None] + sq[picks][None, :] - 2.0 * (p @ centres.T)
        mind = d.min(axis=1)
        mind[picks] = -np.inf
        picks.append(int(np.argmax(mind)))
        per_pick.append(time.perf_counter() - t1)
        m, elapsed = len(picks), time.perf_counter() - t0
        if m < k and (m % 50 == 0 or elapsed > time_limit):
            b, a = np.polyfit(np.arange(1, m), per_pick, 1)
            projected = elapsed + float(sum(a + b * j for j in range(m, k)))
            if projected > 2 * time_limit or elapsed > time_limit:
                return np.asarray(picks), {"finished": False, "picks_done": m, "elapsed_s": round(elapsed, 1),
                                           "projected_s": round(projected, 1)}
    return np.asarray(picks), {"finished": True}


def blas_kcenter(probs: np.ndarray, k: int) -> np.ndarray:
    """Greedy k-center by the BLAS form of the incremental update, the reference speed for ``--vs-blas``.

    ``probs`` (N, C) float32 (Fortran-ordered here: used in place). Per pick: d = |p|² − 2 p·c + |c|² with one
    ``sgemv`` (N × C by C), ``np.minimum`` into the running minima, ``np.argmax`` (first maximum). Same rules as
    pcoreset (cold start: farthest row from the float64 mean rounded to float32, by the same BLAS form; picked
    rows are set to −1), but a different rounding: near-ties may break differently. Extra memory: 3 float32
    vectors of N (row norms, distances, minima).
    """
    n = probs.shape[0]
    sqn = np.empty(n, np.float32)
    step = 65_536
    for start in range(0, n, step):
        chunk = probs[start:start + step]
        sqn[start:start + step] = np.einsum("ij,ij->i", chunk, chunk)
    d = np.empty(n, np.float32)

    def sqdist(centre: np.ndarray) -> np.ndarray:
        np.dot(probs, centre, out=d)
        np.multiply(d, np.float32(-2.0), out=d)
        np.add(d, sqn, out=d)
        np.add(d, np.dot(centre, centre), out=d)
        return d

    mean = (np.add.reduce(probs, axis=0, dtype=np.float64) / n).astype(np.float32)
    mind = np.full(n, np.inf, np.float32)
    picks = np.empty(k, np.int64)
    picks[0] = int(np.argmax(sqdist(mean)))
    mind[picks[0]] = -1.0
    for j in range(1, k):
        np.minimum(mind, sqdist(probs[picks[j - 1]].copy()), out=mind)
        picks[j] = int(np.argmax(mind))
        mind[picks[j]] = -1.0
    return picks


def numba_first_call() -> dict:
    """Time of the first numba k-center call in this process (compile or cache load; tiny input), after
    importing numba and the kernel's module (``import_s``)."""
    sys.path.insert(0, os.path.join(HERE, "..", "src"))
    from nucleate.selection import select

    tiny = make_probs(1000, 5)
    t0 = time.perf_counter()
    import nucleate.selection._kcenter_numba  # noqa: F401 - imports numba

    t1 = time.perf_counter()
    select("pcoreset", tiny, budget=3, backend="numba")
    t2 = time.perf_counter()
    select("pcoreset", tiny, budget=3, backend="numba")
    t3 = time.perf_counter()
    return {"impl": "numba_first_call", "import_s": round(t1 - t0, 3), "first_call_s": round(t2 - t1, 3),
            "second_call_s": round(t3 - t2, 4), "numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR")}


def one(n: int, c: int, k: int, impl: str, naive_limit: float) -> dict:
    """Run one implementation on fresh data in this process; returns its figures."""
    sys.path.insert(0, os.path.join(HERE, "..", "src"))
    from nucleate.selection import select

    if impl == "numba_first_call":
        return numba_first_call()
    if impl == "pcoreset_torch_cpu":
        import torch  # noqa: F401 - imported before the clock starts
    info: dict = {}
    if impl == "pcoreset_numba":  # warm-up: JIT compile (or load the on-disk cache) before the clock starts
        import numba

        w0 = time.perf_counter()
        select("pcoreset", make_probs(1000, c), budget=3, backend="numba")
        info.update(warmup_s=round(time.perf_counter() - w0, 3), numba_threads=numba.get_num_threads(),
                    numba_threading_layer=numba.threading_layer())
    if impl == "blas":
        from threadpoolctl import threadpool_info

        info["blas_threads"] = [f"{p['internal_api']}:{p['num_threads']}" for p in threadpool_info()
                                if p.get("user_api") == "blas"]

    bandwidth = copy_bandwidth()
    probs = make_probs(n, c)
    if impl == "pcoreset_c_order":
        probs = np.ascontiguousarray(probs)
    data_mib = probs.nbytes / 2**20
    rss0 = _rss_kib()
    _reset_hwm()
    load = os.getloadavg()[0]
    c0 = time.process_time()
    t0 = time.perf_counter()
    if impl in ("pcoreset", "pcoreset_c_order"):
        picks = select("pcoreset", probs, budget=k)
    elif impl == "pcoreset_numba":
        picks = select("pcoreset", probs, budget=k, backend="numba")
    elif impl == "blas":
        picks = blas_kcenter(probs, k)
    elif impl == "pcoreset_torch_cpu":
        picks = select("pcoreset", probs, budget=k, backend="torch", device="cpu")
    elif impl == "naive":
        picks, info = naive_kcenter(probs, k, naive_limit)
    else:
        raise ValueError(impl)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    peak = _hwm_kib()
    bound = k * probs.nbytes / bandwidth
    return {"impl": impl, "N": n, "C": c, "k": k, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "load_avg_1min": round(load, 2), "data_mib": round(data_mib, 1),
            "rss_before_mib": round(rss0 / 1024, 1), "peak_rss_mib": round(peak / 1024, 1),
            "peak_extra_mib": round((peak - rss0) / 1024, 1), "copy_bandwidth_gbs": round(bandwidth / 1e9, 2),
            "bound_s": round(bound, 3), "x_bound": round(wall / bound, 2), "picks_sha": _digest(picks), **info}


def _digest(picks: np.ndarray) -> str:
    import hashlib

    return hashlib.sha1(np.asarray(picks, dtype=np.int64).tobytes()).hexdigest()[:12]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", help="N values (default 10000,100000,1000000; --vs-blas: 1000000)")
    ap.add_argument("--classes", help="C values (default 10,50; --vs-blas: 50)")
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--naive-limit", type=float, default=600.0, help="abort naive runs projected beyond this (s)")
    ap.add_argument("--vs-blas", action="store_true",
                    help="compare the k-center backends with the BLAS form (default size 1e6 x 50)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        spec = json.loads(args.one)
        print(json.dumps(one(spec["N"], spec["C"], args.k, spec["impl"], args.naive_limit)))
        return
    if args.vs_blas:
        vs_blas(args)
        return
    results = []
    for n in map(int, (args.sizes or "10000,100000,1000000").split(",")):
        for c in map(int, (args.classes or "10,50").split(",")):
            impls = ["pcoreset", "pcoreset_numba", "pcoreset_torch_cpu", "naive"]
            if n >= 1_000_000 and c == 50:
                impls.insert(1, "pcoreset_c_order")
            for impl in impls:
                results.append(_run_one(n, c, impl, args))
    by = {(r["N"], r["C"], r["impl"]): r for r in results}
    summary = []
    for (n, c, impl), r in by.items():
        if impl != "pcoreset":
            continue
        naive = by.get((n, c, "naive"), {})
        torch_row = by.get((n, c, "pcoreset_torch_cpu"), {})
        numba_row = by.get((n, c, "pcoreset_numba"), {})
        summary.append({
            "N": n, "C": c, "k": args.k, "pcoreset_s": r["wall_s"], "bound_s": r["bound_s"], "x_bound": r["x_bound"],
            "pcoreset_peak_extra_mib": r["peak_extra_mib"],
            "numba_s": numba_row.get("wall_s"), "numba_same_picks": numba_row.get("picks_sha") == r["picks_sha"],
            "torch_cpu_s": torch_row.get("wall_s"), "torch_same_picks": torch_row.get("picks_sha") == r["picks_sha"],
            "naive_s": naive.get("wall_s") if naive.get("finished") else None,
            "naive_projected_s": None if naive.get("finished") else round(naive.get("projected_s", 0), 1),
            "naive_peak_extra_mib": naive.get("peak_extra_mib"),
            "speedup_vs_naive": round(naive["wall_s"] / r["wall_s"], 1) if naive.get("finished") else None,
            "naive_same_picks": naive.get("picks_sha") == r["picks_sha"] if naive.get("finished") else None,
        })
    print(json.dumps({"benchmark": "select", "machine": _machine(), "summary": summary, "runs": results}, indent=1))


def _run_one(n: int, c: int, impl: str, args, env: dict | None = None) -> dict:
    """One implementation in a fresh subprocess; its JSON row (also echoed to stderr)."""
    cmd = [sys.executable, __file__, "--k", str(args.k), "--naive-limit", str(args.naive_limit),
           "--one", json.dumps({"N": n, "C": c, "impl": impl})]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(row), file=sys.stderr)
    return row


def _machine() -> dict:
    import numba
    import torch

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "torch": torch.__version__, "numba": numba.__version__,
            "load_avg_at_end": os.getloadavg()}


def vs_blas(args) -> None:
    """``--vs-blas``: BLAS form (first and last), numpy, numba, torch CPU backends; numba compile cost."""
    sizes, classes = args.sizes or "1000000", args.classes or "50"
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        cold = _run_one(0, 0, "numba_first_call", args, env)
        warm = _run_one(0, 0, "numba_first_call", args, env)
    compile_cost = {"compile_s": cold["first_call_s"], "cached_first_call_s": warm["first_call_s"],
                    "import_s": warm["import_s"], "warm_call_s": warm["second_call_s"],
                    "note": "first call in a fresh process, tiny input: empty numba cache (JIT compile + "
                            "cache write), then that cache; import_s = importing numba and the kernel module"}
    results, summary = [], []
    for n in map(int, sizes.split(",")):
        for c in map(int, classes.split(",")):
            rows = [_run_one(n, c, impl, args)
                    for impl in ("blas", "pcoreset", "pcoreset_numba", "pcoreset_torch_cpu")]
            one_thread = _run_one(n, c, "pcoreset_numba", args, {**os.environ, "NUMBA_NUM_THREADS": "1"})
            one_thread["impl"] = "pcoreset_numba_1thread"
            rows += [one_thread, _run_one(n, c, "blas", args)]
            results += rows
            blas = (rows[0]["wall_s"] + rows[-1]["wall_s"]) / 2
            ref = rows[1]["picks_sha"]
            entry = {"N": n, "C": c, "k": args.k, "blas_s": [rows[0]["wall_s"], rows[-1]["wall_s"]],
                     "blas_mean_s": round(blas, 3)}
            for row in rows[1:-1]:
                name = row["impl"].removeprefix("pcoreset_") if row["impl"] != "pcoreset" else "numpy"
                threads = {"numba_threads": row["numba_threads"]} if "numba_threads" in row else {}
                entry[name] = {"wall_s": row["wall_s"], "cpu_s": row["cpu_s"], "x_blas": round(row["wall_s"] / blas, 2),
                               "same_picks_as_numpy": row["picks_sha"] == ref,
                               "peak_extra_mib": row["peak_extra_mib"], "load_avg_1min": row["load_avg_1min"],
                               **threads}
            entry["blas_same_picks_as_numpy"] = rows[0]["picks_sha"] == ref
            entry["blas_peak_extra_mib"] = rows[0]["peak_extra_mib"]
            entry["numba_target_x_blas"] = 1.4
            entry["numba_target_met"] = entry["numba"]["x_blas"] <= 1.4
            summary.append(entry)
    print(json.dumps({"benchmark": "select_vs_blas", "machine": _machine(), "numba_compile": compile_cost,
                      "summary": summary, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
