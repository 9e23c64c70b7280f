"""A cap on picks per group (e.g. tiles of one whole-slide image per round), for every registered strategy.

Rule: rows carry a group code (``groups`` (N,) int64, ``-1`` = no group, never capped). Walking the strategy's
picks in order, once a group holds ``cap`` picks its other unlabeled rows are excluded, and picking goes on among
the rest. Excluded rows are never picked and are not centres; labeled rows stay centres whatever their group.
When the allowed rows run out, fewer than ``budget`` rows are returned (no error).

Where it is applied (:func:`nucleate.selection.strategies.select_capped`, the one entry for every strategy):

* strategies registered with ``native_cap`` (the k-center ones, ``pcoreset`` and ``coreset``) get a
  :class:`GroupCap` and mask a full group's rows inside their greedy loop (:func:`kcenter_greedy`, every backend):
  coverage stays greedy among the allowed rows, at no extra pass;
* any other strategy is run again on the rows left, with the picks kept so far added to ``labeled``, each time its
  next pick falls in a full group (at most one extra run per group that fills up). For ``entropy`` / ``margin``
  that is the ranking with the excluded rows skipped; ``random`` / ``class_balanced`` draw the rest afresh from
  the allowed rows (``class_balanced`` counts the kept picks as labeled for its quotas) and ``badge`` restarts
  its seeding there (the kept picks are not its centres).
"""

from __future__ import annotations

import numpy as np

__all__ = ["GroupCap", "check_groups"]


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


class GroupCap:
    """Counts picks per group of ``groups`` ((N,) int64 codes, -1 = no group) against ``cap`` (>= 1)."""

    def __init__(self, groups: np.ndarray, cap: int):
        self.groups = groups
        self.cap = int(cap)
        self.count = np.zeros(int(groups.max(initial=-1)) + 1, np.int64)
        self._order = np.argsort(groups, kind="stable")  # rows of group g: _order[_bounds[g]:_bounds[g + 1]]
        self._bounds = np.searchsorted(groups[self._order], np.arange(self.count.size + 1))

    def is_full(self, row: int) -> bool:
        """Whether ``row``'s group already holds ``cap`` picks (never for a row without a group)."""
        g = self.groups[row]
        return bool(g >= 0 and self.count[g] >= self.cap)

    def add(self, row: int) -> np.ndarray | None:
        """Count the pick ``row``; the rows of its group (int64, every one of them) when that pick filled the
        group, else None."""
        g = int(self.groups[row])
        if g < 0:
            return None
        self.count[g] += 1
        if self.count[g] != self.cap:
            return None
        return self._order[self._bounds[g]:self._bounds[g + 1]]
