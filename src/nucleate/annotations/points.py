"""Point coordinates.

Convention (DESIGN.md, ``points`` table): ``x`` = column, ``y`` = row, float pixels, origin at the
top-left *corner* of the top-left pixel, so the centre of pixel ``[r, c]`` is ``(c + 0.5, r + 0.5)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["centroids_xy"]


def centroids_xy(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroids of the instances of a ``(H, W)`` label image, in one pass.

    Returns ``(ids, xy)``: ``ids`` (K,) int64 of the labels present (0 = background excluded),
    ``xy`` (K, 2) float64 pixel coordinates in the corner-origin convention above.
    """
    flat = labels.ravel()
    n = int(flat.max(initial=0)) + 1
    counts = np.bincount(flat, minlength=n)
    rows, cols = np.divmod(np.arange(flat.size), labels.shape[1])
    sum_r = np.bincount(flat, weights=rows, minlength=n)
    sum_c = np.bincount(flat, weights=cols, minlength=n)
    ids = np.flatnonzero(counts)
    ids = ids[ids != 0]
    xy = np.stack([sum_c[ids] / counts[ids] + 0.5, sum_r[ids] / counts[ids] + 0.5], axis=1)
    return ids.astype(np.int64), xy
