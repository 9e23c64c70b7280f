"""Active-learning selection: which unlabeled images to annotate next.

Public API (DESIGN.md)::

    select(strategy, probs, *, budget, labeled=None, seed=0, features=None) -> np.ndarray[int64]

``probs`` (N, C): one probability row per image (the rule of :func:`nucleate.io.tables.find_bad_prob_row`:
finite, >= 0, rows sum to 1 ± ``PROB_SUM_TOLERANCE``). ``labeled``: row
indices already annotated (never picked; the initial centres of the k-center strategies). ``features``
(N, F): per-image feature vectors, required by ``coreset`` and ``badge``. Returns ``budget`` distinct row
indices in pick order. Strategies: see :mod:`nucleate.selection.strategies` (``pcoreset`` is the default
of the pipeline). Bad input raises ``ValueError`` naming the first bad row and its value.

Two keyword arguments beyond the DESIGN signature choose where the k-center strategies run:
``backend`` (``numpy`` default, ``numba``, ``torch``, or ``auto`` = torch when ``device`` resolves to CUDA, else numba)
and ``device`` (``auto``/``cpu``/``cuda``, resolved by :func:`nucleate.device.resolve_device`). Every
backend returns the same picks (see :mod:`nucleate.selection.kcenter`).

Per-group cap: ``groups`` (N,) int64 codes (``-1`` = no group) and ``group_cap`` (>= 1; None or 0 = no cap) keep
at most ``group_cap`` picks per group (e.g. tiles of one slide in one round), for every strategy
(:mod:`nucleate.selection.cap`); the result may then hold fewer than ``budget`` rows. Without a cap (or with
no row in a group) the strategy runs exactly as it would without these arguments.

Memory: pass ``probs`` as a float32 Fortran-ordered array (``np.asfortranarray(p, dtype=np.float32)``)
and ``pcoreset`` works on it in place with O(N) extra memory; any other layout costs one float32 copy.
"""

from __future__ import annotations

import numpy as np

from nucleate.selection.cap import GroupCap, check_groups
from nucleate.selection.kcenter import KCenterResult, kcenter_greedy
from nucleate.selection.strategies import STRATEGIES, Selection, Strategy, class_quotas, register, select_capped
from nucleate.selection.validation import (
    PROB_SUM_TOLERANCE,
    check_budget,
    check_features,
    check_labeled,
    check_probs,
    check_seed,
)

__all__ = [
    "PROB_SUM_TOLERANCE",
    "STRATEGIES",
    "GroupCap",
    "KCenterResult",
    "Selection",
    "Strategy",
    "class_quotas",
    "kcenter_greedy",
    "register",
    "select",
    "select_capped",
    "select_scored",
]


def select_scored(
    strategy: str,
    probs: np.ndarray,
    *,
    budget: int,
    labeled: np.ndarray | list[int] | None = None,
    seed: int = 0,
    features: np.ndarray | None = None,
    backend: str = "numpy",
    device: str | None = None,
    groups: np.ndarray | None = None,
    group_cap: int | None = None,
) -> Selection:
    """Like :func:`select`, returning a :class:`Selection` (indices plus each pick's score)."""
    try:
        entry = STRATEGIES[strategy]
    except (KeyError, TypeError):
        raise ValueError(f"unknown selection strategy {strategy!r}; known: {', '.join(STRATEGIES)}") from None
    probs = check_probs(probs)
    n = probs.shape[0]
    labeled_rows = check_labeled(labeled, n)
    budget = check_budget(budget, n, labeled_rows.size)
    seed = check_seed(seed)
    if entry.needs_features:
        if features is None:
            raise ValueError(f"strategy {strategy!r} needs features: pass features=(N, F) array, row i = "
                             "the feature vector of probs row i")
        features = check_features(features, n, nonzero=strategy == "coreset")
    if group_cap is not None and (isinstance(group_cap, bool) or not isinstance(group_cap, int | np.integer)
                                  or group_cap < 0):
        raise ValueError(f"group_cap must be an integer >= 1 (None or 0 = no cap), got {group_cap!r}")
    if group_cap and groups is not None:
        groups = check_groups(groups, n)
        if (groups >= 0).any():
            return select_capped(entry, probs, budget, labeled_rows, seed, features, backend, device,
                                 groups=groups, cap=int(group_cap))
    return entry.fn(probs, budget, labeled_rows, seed, features, backend, device)


def select(
    strategy: str,
    probs: np.ndarray,
    *,
    budget: int,
    labeled: np.ndarray | list[int] | None = None,
    seed: int = 0,
    features: np.ndarray | None = None,
    backend: str = "numpy",
    device: str | None = None,
    groups: np.ndarray | None = None,
    group_cap: int | None = None,
) -> np.ndarray:
    """Pick ``budget`` unlabeled rows of ``probs`` (N, C) with ``strategy``; int64 row indices in pick order.

    ``pcoreset``: greedy k-center with Euclidean distance between probability rows; centres start as all
    ``labeled`` rows; with none, the first pick is the row farthest from the mean row; ties go to the
    lowest index; labeled rows are never picked.
    """
    return select_scored(strategy, probs, budget=budget, labeled=labeled, seed=seed, features=features,
                         backend=backend, device=device, groups=groups, group_cap=group_cap).indices
