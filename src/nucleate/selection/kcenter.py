"""Greedy k-center (farthest-first traversal) with incremental minimum distances.

Definition (the one PCoreSet and the ``coreset`` baseline use; methods.md §2.8):

* centres start as all ``labeled`` rows; each pick is the unlabeled row whose distance to its nearest
  centre is largest; it then becomes a centre. Ties go to the lowest row index.
* cold start (no labeled rows): the first pick is the row farthest from the mean row.

Arithmetic (fixed, so every backend returns bit-identical picks and distances):

* rows are float32; the squared distance of row ``x`` to centre ``c`` is accumulated class by class in
  float32, ``d = (x[0]-c[0])^2; d += (x[j]-c[j])^2 for j = 1 .. D-1``, each operation rounded once (no FMA);
* the mean row is the float64 column mean rounded to float32;
* the argmax runs over squared distances (no square root), so exact ties stay ties.

Cost: one pass over the (D, N) float32 data per centre (labeled rows and picks): O(N·D) time each and
O(N) extra memory (the running minimum plus two 1 MiB scratch vectors). The data are used in
column-major layout (a (D, N) C-contiguous view): pass a float32 Fortran-ordered (N, D) array to avoid
the one-off conversion copy (N·D·4 bytes).

Backends: ``numpy`` (chunks of 262,144 rows, two 1 MiB scratch vectors), ``numba`` (one fused, multi-threaded
pass per centre: distance, running minimum and argmax; :mod:`nucleate.selection._kcenter_numba`; compiled on first
use, then cached on disk) and ``torch`` (the same operation sequence on a torch device; CUDA when asked for). They
return the same picks and distances, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nucleate.device import resolve_device
from nucleate.selection.cap import GroupCap

__all__ = ["KCenterResult", "kcenter_greedy", "columns_float32", "resolve_backend", "mean_row"]

METRICS = ("euclidean", "cosine")
BACKENDS = ("numpy", "numba", "torch", "auto")
# Rows per numpy pass: two float32 scratch vectors of 1 MiB. Measured on the 2-core EPYC (N = 1e6, C = 50):
# 20-21 ms per pick at 262,144 rows vs 25-28 ms at 65,536 (fewer ufunc calls; the data stream from DRAM anyway).
_CHUNK = 262_144
_CONVERT_BYTES = 32 * 2**20  # float64 staging per chunk when converting / normalising rows
# torch on CPU: below torch's intra-op grain size (32,768), so every op stays on one thread. Larger chunks
# fan out to the OpenMP pool, which on a busy 2-core machine was measured 150x slower (oversubscription).
_TORCH_CPU_CHUNK = 32_768


@dataclass(frozen=True)
class KCenterResult:
    """Picks in order (int64 row indices) and each pick's distance to its nearest centre when picked.

    ``min_distance`` (float64) is Euclidean distance for ``euclidean`` and cosine distance (1 - cos) for
    ``cosine``; NaN for a cold-start first pick (no centre existed).
    """

    indices: np.ndarray
    min_distance: np.ndarray


def columns_float32(points: np.ndarray) -> np.ndarray:
    """(D, N) C-contiguous float32 view of ``points`` (N, D); a copy only when the input is not
    already float32 Fortran-ordered."""
    if points.dtype == np.float32 and points.flags.f_contiguous:
        return points.T
    out = np.empty((points.shape[1], points.shape[0]), dtype=np.float32)
    step = _convert_rows(points.shape[1])
    for start in range(0, points.shape[0], step):
        out[:, start:start + step] = points[start:start + step].T
    return out


def _convert_rows(dim: int) -> int:
    return max(1024, _CONVERT_BYTES // (8 * max(1, dim)))


def _normalised_columns(points: np.ndarray) -> np.ndarray:
    """(D, N) float32 copy of ``points`` with every row scaled to unit L2 norm (norm in float64)."""
    out = np.empty((points.shape[1], points.shape[0]), dtype=np.float32)
    step = _convert_rows(points.shape[1])
    for start in range(0, points.shape[0], step):
        chunk = np.asarray(points[start:start + step], dtype=np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
        out[:, start:start + step] = (chunk / norms[:, None]).T
    return out


def mean_row(cols: np.ndarray) -> np.ndarray:
    """Column means of the data (D, N) -> (D,): float64 mean rounded to float32."""
    return (np.add.reduce(cols, axis=1, dtype=np.float64) / cols.shape[1]).astype(np.float32)


def resolve_backend(backend: str, device: str | None = None) -> tuple[str, str | None]:
    """Map (``backend``, ``device``) to a concrete pair (backend, torch device string or None).

    The device rule is :func:`nucleate.device.resolve_device` (``None`` = ``auto``). ``numpy`` and ``numba``
    ignore ``device`` (CPU); ``torch`` runs on the resolved device; ``auto`` = torch when the resolved device is
    CUDA, else numba (so ``auto`` + ``cpu`` is numba and ``auto`` + ``cuda`` is torch on CUDA, or an error
    without one).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend in ("numpy", "numba"):
        return backend, None
    dev = resolve_device("auto" if device is None else device, setting="device")
    if backend == "auto" and dev.type != "cuda":
        return "numba", None
    return "torch", str(dev)


def kcenter_greedy(
    points: np.ndarray,
    budget: int,
    *,
    labeled: np.ndarray | None = None,
    metric: str = "euclidean",
    backend: str = "numpy",
    device: str | None = None,
    cap: GroupCap | None = None,
) -> KCenterResult:
    """Greedy k-center over the rows of ``points`` (N, D); see the module docstring for the exact rule.

    ``labeled`` (sorted unique int64 row indices) are the initial centres and are never picked.
    ``cap`` (:class:`nucleate.selection.cap.GroupCap`): after each pick, the rows of a group that just reached its cap
    are masked out of the candidates (not centres); the loop goes on among the rest and stops early (fewer than
    ``budget`` picks) when none is left. The torch backend then reads each pick on the host (one sync per pick).
    ``metric`` ``cosine`` L2-normalises rows first (1 - cos(x, c) = |x̂ - ĉ|² / 2, the form used here).
    Inputs are assumed validated (see :mod:`nucleate.selection.validation`); ``budget`` <= N - len(labeled).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    labeled = np.zeros(0, np.int64) if labeled is None else np.asarray(labeled, dtype=np.int64)
    cols = _normalised_columns(points) if metric == "cosine" else columns_float32(points)
    centre0 = mean_row(cols) if labeled.size == 0 else None
    name, dev = resolve_backend(backend, device)
    runner = {"numpy": _run_numpy, "numba": _run_numba, "torch": _run_torch}[name]
    indices, sqdist = runner(cols, int(budget), labeled, centre0, dev, cap)
    dist = sqdist.astype(np.float64)
    dist = dist / 2.0 if metric == "cosine" else np.sqrt(dist)
    return KCenterResult(indices.astype(np.int64), dist)


# ----------------------------------------------------------------------------------------- numpy


def _sqdist_numpy(cols: np.ndarray, centre: np.ndarray, start: int, stop: int,
                  acc: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """Squared distances of rows start:stop to ``centre`` (D,), accumulated class by class into ``acc``."""
    n = stop - start
    a, t = acc[:n], tmp[:n]
    np.subtract(cols[0, start:stop], centre[0], out=a)
    np.multiply(a, a, out=a)
    for j in range(1, cols.shape[0]):
        np.subtract(cols[j, start:stop], centre[j], out=t)
        np.multiply(t, t, out=t)
        np.add(a, t, out=a)
    return a


def _run_numpy(cols, budget, labeled, centre0, _device, cap=None):
    n = cols.shape[1]
    chunk = min(_CHUNK, n)
    acc = np.empty(chunk, np.float32)
    tmp = np.empty(chunk, np.float32)
    mind = np.full(n, np.inf, dtype=np.float32)
    mind[labeled] = -1.0  # never picked; min(-1, d >= 0) keeps it at -1

    def update(centre):
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            d = _sqdist_numpy(cols, centre, start, stop, acc, tmp)
            np.minimum(mind[start:stop], d, out=mind[start:stop])

    for row in labeled:
        update(cols[:, row].copy())
    picks = np.empty(budget, np.int64)
    sq = np.empty(budget, np.float32)
    if centre0 is not None:  # cold start: farthest row from the mean row
        far = np.empty(n, np.float32)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            far[start:stop] = _sqdist_numpy(cols, centre0, start, stop, acc, tmp)
        first = int(np.argmax(far))
        del far
        picks[0], sq[0] = first, np.nan
        mind[first] = -1.0
        _mask_full(cap, first, mind)
        if budget > 1:
            update(cols[:, first].copy())
    for k in range(0 if centre0 is None else 1, budget):
        best = int(np.argmax(mind))  # first maximum = lowest index among ties
        if mind[best] < 0:  # only with a cap: every row left is masked out
            return picks[:k], sq[:k]
        picks[k], sq[k] = best, mind[best]
        mind[best] = -1.0
        _mask_full(cap, best, mind)
        if k + 1 < budget:
            update(cols[:, best].copy())
    return picks, sq


def _mask_full(cap: GroupCap | None, row: int, mind) -> None:
    """Count the pick ``row`` against ``cap``; when its group is now full, mask the group's rows (mind = -1)."""
    if cap is not None and (rows := cap.add(row)) is not None:
        mind[rows] = -1.0


# ----------------------------------------------------------------------------------------- numba


def _run_numba(cols, budget, labeled, centre0, _device, cap=None):
    """Same picks as :func:`_run_numpy`: each pass also returns the argmax of the updated minima.

    The kernel's min / max / argmax follow numpy only for non-NaN distances, so the rows are checked to be finite
    first (one chunked pass; finite rows give finite or +inf distances, never NaN). Threads: numba's setting
    (``NUMBA_NUM_THREADS``, default all cores), at most one per block of rows (a pool smaller than one block runs
    on the calling thread: no wake-ups of idle threads for each pick)."""
    import numba

    from nucleate.selection._kcenter_numba import BLOCK

    n = cols.shape[1]
    step = _convert_rows(cols.shape[0])
    for start in range(0, n, step):
        finite = np.isfinite(cols[:, start:start + step]).all(axis=0)
        if not finite.all():
            raise ValueError(f"row {start + int(np.argmin(finite))} is not finite; k-center needs finite rows")
    threads = numba.get_num_threads()  # a per-thread setting: restored below
    numba.set_num_threads(min(threads, -(-n // BLOCK)))
    try:
        return _numba_passes(cols, budget, labeled, centre0, cap)
    finally:
        numba.set_num_threads(threads)


def _numba_passes(cols, budget, labeled, centre0, cap):
    from nucleate.selection._kcenter_numba import BLOCK, update_argmax

    n = cols.shape[1]
    mind = np.full(n, np.inf, dtype=np.float32)
    mind[labeled] = -1.0
    picks = np.empty(budget, np.int64)
    sq = np.empty(budget, np.float32)
    best = -1
    for row in labeled:
        best = update_argmax(cols, cols[:, row].copy(), mind, BLOCK)
    k0 = 0
    if centre0 is not None:  # cold start: farthest row from the mean row (argmax of min(inf, d) = argmax d)
        far = np.full(n, np.inf, dtype=np.float32)
        first = int(update_argmax(cols, centre0, far, BLOCK))
        del far
        picks[0], sq[0] = first, np.nan
        mind[first] = -1.0
        _mask_full(cap, first, mind)
        if budget > 1:
            best = update_argmax(cols, cols[:, first].copy(), mind, BLOCK)
        k0 = 1
    for k in range(k0, budget):
        best = int(best)
        if mind[best] < 0:  # only with a cap: every row left is masked out
            return picks[:k], sq[:k]
        picks[k], sq[k] = best, mind[best]
        mind[best] = -1.0
        _mask_full(cap, best, mind)  # before the pass, so the pass's argmax skips the masked rows
        if k + 1 < budget:
            best = update_argmax(cols, cols[:, best].copy(), mind, BLOCK)
    return picks, sq


# ----------------------------------------------------------------------------------------- torch


def _run_torch(cols, budget, labeled, centre0, device, cap=None):
    import torch

    dev = torch.device(device)
    data = torch.from_numpy(np.ascontiguousarray(cols)).to(dev)
    n = data.shape[1]
    # CPU: single-threaded cache-sized chunks (see _TORCH_CPU_CHUNK); CUDA: one launch per op over all rows.
    chunk = n if dev.type == "cuda" else min(_TORCH_CPU_CHUNK, n)
    acc = torch.empty(chunk, dtype=torch.float32, device=dev)
    tmp = torch.empty(chunk, dtype=torch.float32, device=dev)
    mind = torch.full((n,), float("inf"), dtype=torch.float32, device=dev)
    if labeled.size:
        mind[torch.from_numpy(labeled).to(dev)] = -1.0

    def sqdist(centre, start, stop):
        m = stop - start
        a, t = acc[:m], tmp[:m]
        torch.sub(data[0, start:stop], centre[0], out=a)
        torch.mul(a, a, out=a)
        for j in range(1, data.shape[0]):
            torch.sub(data[j, start:stop], centre[j], out=t)
            torch.mul(t, t, out=t)
            torch.add(a, t, out=a)
        return a

    def update(centre):
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            view = mind[start:stop]
            torch.minimum(view, sqdist(centre, start, stop), out=view)

    def mask_full(row):
        if cap is not None and (rows := cap.add(row)) is not None:
            mind[torch.from_numpy(rows).to(dev)] = -1.0

    for row in labeled:
        update(data[:, int(row)].clone())
    picks = torch.empty(budget, dtype=torch.int64, device=dev)
    sq = torch.empty(budget, dtype=torch.float32, device=dev)
    if centre0 is not None:
        centre = torch.from_numpy(centre0).to(dev)
        far = torch.empty(n, dtype=torch.float32, device=dev)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            far[start:stop] = sqdist(centre, start, stop)
        first = torch.argmax(far)  # documented: first maximal index
        del far
        picks[0], sq[0] = first, float("nan")
        mind[first] = -1.0
        mask_full(int(first))
        if budget > 1:
            update(data[:, first].clone())
    for k in range(0 if centre0 is None else 1, budget):  # no host synchronisation inside the loop (without a cap)
        best = torch.argmax(mind)
        if cap is not None and float(mind[best]) < 0:  # every row left is masked out
            return picks[:k].cpu().numpy(), sq[:k].cpu().numpy()
        picks[k] = best
        sq[k] = mind[best]
        mind[best] = -1.0
        mask_full(None if cap is None else int(best))
        if k + 1 < budget:
            update(data[:, best].clone())
    return picks.cpu().numpy(), sq.cpu().numpy()
