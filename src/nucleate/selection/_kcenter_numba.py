"""Numba kernel of the greedy k-center update: one fused, parallel pass per centre.

Imported lazily by :mod:`nucleate.selection.kcenter` (importing numba costs ~0.5 s). The pass computes the squared
distance of every row to the new centre with exactly the operation sequence of the numpy backend (float32,
``d = (x[0]-c[0])^2``, then ``d = d + (x[j]-c[j])^2`` for j = 1 .. D-1, each operation rounded once: no
``fastmath``, so LLVM neither fuses multiply-adds nor reorders the sum), lowers the running minimum in place
(``np.minimum`` semantics on finite values) and returns the first row index holding the largest running minimum
(``np.argmax`` semantics: lowest index among ties).

Parallelism: ``prange`` over fixed blocks of :data:`BLOCK` rows (independent of the thread count). Each block
reports its maximum (max is exact, so any evaluation order gives the same value); then, serially, the first block
holding the overall maximum is found with a strict ``>`` in block order, and the first row holding that value in
that block is the answer: the lowest index among ties, whatever the number of threads. Inside a block the classes
are the outer loop and the rows the inner one (contiguous in the (D, N) layout; independent lanes, so it vectorises
without changing any row's summation order); the per-block accumulator is ``BLOCK`` float32, updated by 8
classes per sweep (each added in turn, so the rounding is unchanged); the last class is fused with the running
minimum.

Compiled on first use and cached on disk (``cache=True``: next to this file, or numba's user-wide cache
directory when that is not writable; ``NUMBA_CACHE_DIR`` overrides).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["BLOCK", "update_argmax"]

# Rows per parallel block: 16,384 float32 = a 64 KiB accumulator (L2-resident). Measured on the 2-core EPYC
# (N = 1e6, C = 50, other jobs running; best of 5): 8-25 ms per pass at 16,384 rows, 4,096 rows 10-40 % slower
# (more, shorter column streams); 32,768 no better.
BLOCK = 16_384


@njit(cache=True, nogil=True, inline="always")
def _block_max(mm):
    """Largest value of ``mm`` (1-D float32, finite): 8 independent running maxima so the loop is not bound by
    the latency of one compare chain (max is exact, so the grouping cannot change the result)."""
    m = mm.size
    b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = mm[0]
    full = m - m % 8
    for i in range(0, full, 8):
        b0 = max(b0, mm[i])
        b1 = max(b1, mm[i + 1])
        b2 = max(b2, mm[i + 2])
        b3 = max(b3, mm[i + 3])
        b4 = max(b4, mm[i + 4])
        b5 = max(b5, mm[i + 5])
        b6 = max(b6, mm[i + 6])
        b7 = max(b7, mm[i + 7])
    best = max(max(max(b0, b1), max(b2, b3)), max(max(b4, b5), max(b6, b7)))
    for i in range(full, m):
        best = max(best, mm[i])
    return best


@njit(parallel=True, cache=True, nogil=True)
def update_argmax(cols, centre, mind, block):
    """Lower ``mind`` (N,) float32 in place to min(mind, squared distance of each column of ``cols`` (D, N)
    float32 to ``centre`` (D,) float32); return the first index of the largest value of the updated ``mind``.

    No NaN anywhere (finite rows; ``mind`` may start at +inf; -1 marks centres)."""
    d, n = cols.shape
    nblocks = (n + block - 1) // block
    bmax = np.empty(nblocks, np.float32)
    for b in prange(nblocks):
        start = b * block
        stop = min(n, start + block)
        m = stop - start
        mm = mind[start:stop]
        acc = np.empty(m, np.float32)
        col = cols[0, start:stop]
        c0 = centre[0]
        for i in range(m):
            t = col[i] - c0
            acc[i] = t * t
        j = 1
        while j + 8 <= d - 1:  # 8 classes per sweep over acc, added one after another (same rounding)
            c1, c2, c3, c4 = centre[j], centre[j + 1], centre[j + 2], centre[j + 3]
            c5, c6, c7, c8 = centre[j + 4], centre[j + 5], centre[j + 6], centre[j + 7]
            x1, x2, x3, x4 = (cols[j, start:stop], cols[j + 1, start:stop], cols[j + 2, start:stop],
                              cols[j + 3, start:stop])
            x5, x6, x7, x8 = (cols[j + 4, start:stop], cols[j + 5, start:stop], cols[j + 6, start:stop],
                              cols[j + 7, start:stop])
            for i in range(m):
                t1, t2, t3, t4 = x1[i] - c1, x2[i] - c2, x3[i] - c3, x4[i] - c4
                t5, t6, t7, t8 = x5[i] - c5, x6[i] - c6, x7[i] - c7, x8[i] - c8
                a = acc[i] + t1 * t1
                a = a + t2 * t2
                a = a + t3 * t3
                a = a + t4 * t4
                a = a + t5 * t5
                a = a + t6 * t6
                a = a + t7 * t7
                acc[i] = a + t8 * t8
            j += 8
        while j < d:  # the remaining classes; the last one fused with the running minimum when D > 1
            cj = centre[j]
            col = cols[j, start:stop]
            if j < d - 1:
                for i in range(m):
                    t = col[i] - cj
                    acc[i] = acc[i] + t * t
            else:
                for i in range(m):
                    t = col[i] - cj
                    a = acc[i] + t * t
                    v = mm[i]
                    mm[i] = a if a < v else v  # np.minimum on non-NaN values
            j += 1
        if d == 1:
            for i in range(m):
                a = acc[i]
                v = mm[i]
                mm[i] = a if a < v else v
        bmax[b] = _block_max(mm)
    # first block holding the overall maximum, then the first index holding it inside that block
    first = 0
    for b in range(1, nblocks):
        if bmax[b] > bmax[first]:
            first = b
    start = first * block
    best = bmax[first]
    i = start
    while i < n and mind[i] != best:  # found within the block (best is one of its values; no NaN)
        i += 1
    return i
