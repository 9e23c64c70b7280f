"""A cap on picks per group (e.g. tiles of one whole-slide image per round), for every registered strategy.

Rule: rows carry a group code (``groups`` (N,) int64, ``-1`` = no group, never capped). The strategy runs as
usual; walking its picks in order, once a group holds ``cap`` picks its other unlabeled rows are excluded and
picking continues among the rest. Excluded rows are not centres and never picked; labeled rows stay
centres whatever their group.

How it continues: the first pick of a full group and everything after it are dropped; the strategy is run
again on the rows left (excluded rows removed), with the picks kept so far added to ``labeled``, for the
rest of the budget. For the k-center strategies (``pcoreset``, ``coreset``) that is exactly the greedy loop
with the excluded rows masked out (a pick's distance to its nearest centre does not depend on other rows;
ties still go to the lowest row index); for ``entropy`` / ``margin`` it skips the excluded rows in rank
order. ``random`` / ``class_balanced`` draw the rest afresh from the allowed rows (``class_balanced``
counts the kept picks as labeled for its quotas) and ``badge`` restarts its seeding there (the kept picks
are not its centres). Cost: at most one extra strategy run per group that fills up.

When the allowed rows run out, fewer than ``budget`` rows are returned (no error).
"""

from __future__ import annotations

import numpy as np

from nucleate.selection.strategies import Selection, StrategyFn

__all__ = ["check_groups", "select_capped"]


def check_groups(groups: object, n_rows: int) -> np.ndarray:
    """``groups`` as an (N,) int64 array of codes >= -1; else :class:`ValueError` naming the first bad entry."""
    array = np.asarray(groups)
    if array.shape != (n_rows,):
        raise ValueError(f"groups must have one code per probs row ({n_rows}), got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"groups must hold integer codes (-1 = no group), got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    bad = np.flatnonzero(array < -1)
    if bad.size:
        raise ValueError(f"groups[{bad[0]}] = {array[bad[0]]}; codes are >= 0, or -1 for no group")
    return array


def _take_rows(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of ``a`` (N, D), keeping a Fortran layout Fortran (k-center's no-copy input)."""
    if a.flags.f_contiguous and not a.flags.c_contiguous:
        return np.take(a.T, rows, axis=1).T
    return a[rows]


def select_capped(fn: StrategyFn, probs: np.ndarray, budget: int, labeled: np.ndarray, seed: int,
                  features: np.ndarray | None, backend: str, device: str | None, *, groups: np.ndarray,
                  cap: int) -> Selection:
    """Run the strategy ``fn`` (its registry signature, validated inputs) with at most ``cap`` (>= 1) picks per
    group of ``groups`` (see the module docstring). Returns up to ``budget`` picks in order with their scores."""
    n = probs.shape[0]
    count = np.zeros(int(groups.max(initial=-1)) + 1, np.int64)
    taken = np.zeros(n, bool)
    taken[labeled] = True
    picks: list[int] = []
    scores: list[float] = []
    blocked = np.zeros(n, bool)
    name, score_name = None, None
    while len(picks) < budget:
        if blocked.any():
            rows = np.flatnonzero(~blocked)
            sub_probs = _take_rows(probs, rows)
            sub_feats = None if features is None else _take_rows(features, rows)
            sub_labeled = np.searchsorted(rows, np.flatnonzero(taken)).astype(np.int64)
        else:
            rows, sub_probs, sub_feats = None, probs, features
            sub_labeled = np.flatnonzero(taken).astype(np.int64)
        open_rows = (n if rows is None else rows.size) - sub_labeled.size
        if open_rows == 0:
            break
        sel = fn(sub_probs, min(budget - len(picks), open_rows), sub_labeled, seed, sub_feats, backend, device)
        name, score_name = sel.strategy, sel.score_name
        indices = sel.indices if rows is None else rows[sel.indices]
        overflow = False
        for i, score in zip(indices.tolist(), sel.scores.tolist(), strict=True):
            g = groups[i]
            if g >= 0 and count[g] >= cap:
                overflow = True
                break
            picks.append(i)
            scores.append(score)
            taken[i] = True
            if g >= 0:
                count[g] += 1
        if not overflow:
            break
        full = np.flatnonzero(count >= cap)
        blocked = np.isin(groups, full) & ~taken
    return Selection(name, np.asarray(picks, np.int64), np.asarray(scores, np.float64), score_name)
