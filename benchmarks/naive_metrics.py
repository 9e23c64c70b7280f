"""Naive reference metrics: a per-instance loop in the style of HoVer-Net's ``stats_utils.py``.

Used as the speed baseline in ``bench_metrics.py`` and as an independent cross-check in
``tests/core/test_metrics.py``. Each true instance's mask is built, the predictions under it are
found and every (true, pred) pair's intersection/union computed from full-image masks: O(T·H·W).
"""

from __future__ import annotations

import numpy as np


def _pairs(true: np.ndarray, pred: np.ndarray):
    true_ids = [i for i in np.unique(true) if i != 0]
    pred_ids = [j for j in np.unique(pred) if j != 0]
    pred_area = {j: int((pred == j).sum()) for j in pred_ids}
    inter, union, true_area = {}, {}, {}
    for i in true_ids:
        t = true == i
        true_area[i] = int(t.sum())
        for j in np.unique(pred[t]):
            if j == 0:
                continue
            p = pred == j
            inter[i, j] = int((t & p).sum())
            union[i, j] = int((t | p).sum())
    return true_ids, pred_ids, true_area, pred_area, inter, union


def naive_aji(true: np.ndarray, pred: np.ndarray) -> float:
    true_ids, pred_ids, true_area, pred_area, inter, union = _pairs(true, pred)
    if not true_ids and not pred_ids:
        return 1.0
    c = u = 0
    used = set()
    for i in true_ids:
        cands = [(inter[i, j] / union[i, j], -j, j) for (ii, j) in inter if ii == i]
        if not cands:
            u += true_area[i]
            continue
        _, _, j = max(cands)
        c += inter[i, j]
        u += union[i, j]
        used.add(j)
    u += sum(pred_area[j] for j in pred_ids if j not in used)
    return c / u


def naive_pq(true: np.ndarray, pred: np.ndarray, thr: float = 0.5) -> tuple[float, float, float]:
    true_ids, pred_ids, _, _, inter, union = _pairs(true, pred)
    if not true_ids and not pred_ids:
        return 1.0, 1.0, 1.0
    ious = [inter[k] / union[k] for k in inter if inter[k] / union[k] > thr]
    tp = len(ious)
    fp, fn = len(pred_ids) - tp, len(true_ids) - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = sum(ious) / tp if tp else 0.0
    return dq, sq, dq * sq


def naive_object_dice(true: np.ndarray, pred: np.ndarray) -> float:
    true_ids, pred_ids, true_area, pred_area, inter, _ = _pairs(true, pred)
    if not true_ids and not pred_ids:
        return 1.0
    if not true_ids or not pred_ids:
        return 0.0

    def half(ids, area, other_area, key):
        total = sum(area.values())
        s = 0.0
        for i in ids:
            cands = [(v, -o, o) for k, v in inter.items() for (a, o) in [key(k)] if a == i]
            if cands:
                v, _, o = max(cands)
                s += area[i] / total * 2 * v / (area[i] + other_area[o])
        return s

    return 0.5 * (half(true_ids, true_area, pred_area, lambda k: k)
                  + half(pred_ids, pred_area, true_area, lambda k: (k[1], k[0])))
