"""Input checks for :func:`nucleate.selection.select`.

Every check raises :class:`ValueError` naming the first bad row (and class / position) and the offending
value, and says what a valid input looks like. Checks run over row chunks so a (1e6, 50) input never
allocates an (N, C) temporary.
"""

from __future__ import annotations

import operator

import numpy as np

from nucleate.io.tables import PROB_SUM_TOLERANCE, find_bad_prob_row

__all__ = ["PROB_SUM_TOLERANCE", "check_probs", "check_features", "check_labeled", "check_budget", "check_seed"]

_CHUNK_ROWS = 65_536


def _as_2d(name: str, values: object) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.floating)
                                     or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must be a real-valued numeric array, got dtype {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N rows, C columns), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column, got shape {array.shape}")
    return array


def check_probs(probs: object) -> np.ndarray:
    """Validate class probabilities, shape (N, C), by the project's one rule
    (:func:`nucleate.io.tables.find_bad_prob_row`: finite, >= 0, rows summing to 1 ± ``PROB_SUM_TOLERANCE``).

    Returns ``probs`` as an array (no copy when it already is one).
    """
    array = _as_2d("probs", probs)
    bad = find_bad_prob_row(array)
    if bad is not None:
        hint = " (check the model output for this row)" if bad.problem == "non-finite" else ""
        raise ValueError(f"probs row {bad.row}: {bad.describe()}{hint}")
    return array


def check_features(features: object, n_rows: int, *, nonzero: bool) -> np.ndarray:
    """Validate a feature matrix (N, F) aligned with the probability rows: finite; with ``nonzero`` no all-zero row."""
    array = _as_2d("features", features)
    if array.shape[0] != n_rows:
        raise ValueError(f"features has {array.shape[0]} rows but probs has {n_rows}; row i of features must "
                         "describe the same image as row i of probs")
    for start in range(0, array.shape[0], _CHUNK_ROWS):
        chunk = array[start:start + _CHUNK_ROWS]
        finite = np.isfinite(chunk)
        if not finite.all():
            local = int(np.flatnonzero(~finite.all(axis=1))[0])
            col = int(np.flatnonzero(~finite[local])[0])
            raise ValueError(f"features row {start + local}, column {col} is {chunk[local, col]}; "
                             "features must be finite")
        if nonzero:
            zero = ~chunk.any(axis=1)
            if zero.any():
                raise ValueError(f"features row {start + int(np.flatnonzero(zero)[0])} is all zeros; cosine "
                                 "distance needs a non-zero feature vector per row")
    return array


def check_labeled(labeled: object, n_rows: int) -> np.ndarray:
    """Validate labeled row indices; returns them sorted, unique, int64 (empty when ``labeled`` is None)."""
    if labeled is None:
        return np.zeros(0, dtype=np.int64)
    array = np.asarray(labeled)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1:
        raise ValueError(f"labeled must be a 1-D sequence of row indices, got shape {array.shape}")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labeled must hold integer row indices, got dtype {array.dtype} "
                         f"(first value {array[0]!r})")
    bad = (array < 0) | (array >= n_rows)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise ValueError(f"labeled[{pos}] = {array[pos]} is out of range: probs has {n_rows} rows "
                         f"(valid indices 0..{n_rows - 1})")
    return np.unique(array.astype(np.int64))


def check_budget(budget: object, n_rows: int, n_labeled: int) -> int:
    """Validate the number of rows to pick: an integer in 1 .. (N - number of labeled rows)."""
    if isinstance(budget, bool | np.bool_):
        raise ValueError(f"budget must be an integer >= 1, got {budget!r}")
    try:
        value = operator.index(budget)
    except TypeError:
        raise ValueError(f"budget must be an integer >= 1, got {budget!r}") from None
    if value < 1:
        raise ValueError(f"budget must be an integer >= 1, got {value}")
    pool = n_rows - n_labeled
    if value > pool:
        raise ValueError(f"budget {value} is larger than the unlabeled pool: {pool} rows "
                         f"({n_rows} rows - {n_labeled} labeled)")
    return value


def check_seed(seed: object) -> int:
    """Validate a random seed: a non-negative integer (bools refused)."""
    if isinstance(seed, bool | np.bool_):
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        value = operator.index(seed)
    except TypeError:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}") from None
    if value < 0:
        raise ValueError(f"seed must be a non-negative integer, got {value}")
    return value
