"""Detection F1 from points: one-to-one (Hungarian) matching of predicted to true centres within a radius."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

__all__ = ["PointMatch", "match_points", "detection_f1"]


@dataclass(frozen=True)
class PointMatch:
    """Result of :func:`match_points`. ``pairs`` (TP, 2) int64 holds (true index, pred index) rows."""

    pairs: np.ndarray
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 1.0 with no predictions."""
        return 1.0 if self.tp + self.fp == 0 else self.tp / (self.tp + self.fp)

    @property
    def recall(self) -> float:
        """TP / (TP + FN); 1.0 with no true points."""
        return 1.0 if self.tp + self.fn == 0 else self.tp / (self.tp + self.fn)

    @property
    def f1(self) -> float:
        """TP / (TP + FP/2 + FN/2); 1.0 when both sets are empty."""
        total = self.tp + 0.5 * (self.fp + self.fn)
        return 1.0 if total == 0 else self.tp / total


def _as_points(name: str, points: np.ndarray) -> np.ndarray:
    arr = np.asarray(points, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 2))
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be an array of shape (K, 2) holding (x, y) pixels; got shape {arr.shape}")
    bad = ~np.isfinite(arr).all(1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{i}] = {arr[i].tolist()} is not finite; every point needs numeric x and y")
    return arr


def match_points(true_points: np.ndarray, pred_points: np.ndarray, radius: float) -> PointMatch:
    """Pair predicted with true points one-to-one, only pairs closer than or equal to ``radius`` pixels.

    Maximises the number of pairs, then minimises their summed distance (Hungarian assignment,
    run per connected group of candidate pairs, so thousands of points stay fast). Points are
    (K, 2) arrays of (x, y); only distances matter, so any consistent convention works.
    """
    if not np.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius must be a positive number of pixels, got {radius}")
    t = _as_points("true_points", true_points)
    p = _as_points("pred_points", pred_points)
    nt, npred = len(t), len(p)
    if nt == 0 or npred == 0:
        return PointMatch(np.zeros((0, 2), np.int64), 0, npred, nt)
    cand = cKDTree(t).sparse_distance_matrix(cKDTree(p), radius, output_type="ndarray")
    rows, cols, dist = cand["i"].astype(np.int64), cand["j"].astype(np.int64), cand["v"]
    if rows.size == 0:
        return PointMatch(np.zeros((0, 2), np.int64), 0, npred, nt)
    graph = coo_matrix((np.ones(rows.size), (rows, cols + nt)), shape=(nt + npred, nt + npred))
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[rows]
    single = np.bincount(edge_comp)[edge_comp] == 1  # isolated pairs (the common case): matched as is
    pairs = list(zip(rows[single], cols[single], strict=True))
    rest = np.flatnonzero(~single)
    order = rest[np.argsort(edge_comp[rest], kind="stable")]
    bounds = np.flatnonzero(np.diff(edge_comp[order])) + 1
    for chunk in np.split(order, bounds) if order.size else ():
        r, c, d = rows[chunk], cols[chunk], dist[chunk]
        ur, ri = np.unique(r, return_inverse=True)
        uc, ci = np.unique(c, return_inverse=True)
        if ur.size == 1 or uc.size == 1:  # a star: the closest partner wins (ties: lowest index)
            k = np.lexsort((c, r, d))[0]
            pairs.append((r[k], c[k]))
            continue
        big = radius * (min(ur.size, uc.size) + 1) + 1.0  # a missing edge costs more than any full matching
        cost = np.full((ur.size, uc.size), big)
        cost[ri, ci] = np.minimum(cost[ri, ci], d)
        a, b = linear_sum_assignment(cost)
        keep = cost[a, b] < big
        pairs.extend(zip(ur[a[keep]], uc[b[keep]], strict=True))
    arr = np.asarray(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    tp = len(arr)
    return PointMatch(arr, tp, npred - tp, nt - tp)


def detection_f1(true_points: np.ndarray, pred_points: np.ndarray, radius: float) -> float:
    """Detection F1 = TP / (TP + FP/2 + FN/2) after :func:`match_points`; 1.0 when both sets are empty."""
    return match_points(true_points, pred_points, radius).f1
