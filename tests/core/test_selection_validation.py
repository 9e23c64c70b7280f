"""nucleate.selection input validation: every bad input raises ValueError naming the first bad row and value."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nucleate.selection import STRATEGIES, select


def _probs(n: int = 8, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(c), size=n)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 40), st.integers(1, 5), st.data(),
       st.sampled_from([np.nan, np.inf, -np.inf, -0.25, "sum"]))
def test_first_bad_probability_row_is_named_with_its_value(n, c, data, bad):
    probs = _probs(n, c)
    rows = sorted(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3, unique=True)))
    col = data.draw(st.integers(0, c - 1))
    for row in rows:
        if bad == "sum":
            probs[row] *= 1.5
        else:
            probs[row, col] = bad
    strategy = data.draw(st.sampled_from(sorted(STRATEGIES)))
    with pytest.raises(ValueError) as err:
        select(strategy, probs, budget=1, features=np.ones((n, 2)))
    message = str(err.value)
    assert f"probs row {rows[0]}:" in message
    if bad == "sum":
        assert f"sums to {probs[rows[0]].sum():.6f}" in message
    else:
        assert f"class {col} is {bad}" in message


def test_rows_summing_to_one_within_tolerance_are_accepted():
    probs = np.array([[0.5, 0.5009], [0.4995, 0.5]])
    assert select("pcoreset", probs, budget=1).tolist() in ([0], [1])
    with pytest.raises(ValueError, match=r"probs row 0: sums to 1\.001100; each row must sum to 1 \(±0\.001\)"):
        select("pcoreset", np.array([[0.5, 0.5011], [0.5, 0.5]]), budget=1)


@pytest.mark.parametrize(("probs", "pattern"), [
    (np.ones(3) / 3, r"2-D array .* got shape \(3,\)"),
    (np.ones((2, 2, 2)) / 2, r"2-D array .* got shape \(2, 2, 2\)"),
    (np.zeros((0, 3)), r"at least one row and one column, got shape \(0, 3\)"),
    (np.array([["a", "b"]]), r"numeric array, got dtype <U1"),
])
def test_wrong_shapes_and_dtypes(probs, pattern):
    with pytest.raises(ValueError, match=pattern):
        select("pcoreset", probs, budget=1)


@pytest.mark.parametrize(("budget", "pattern"), [
    (0, r"budget must be an integer >= 1, got 0"),
    (-3, r"budget must be an integer >= 1, got -3"),
    (2.5, r"budget must be an integer >= 1, got 2\.5"),
    (True, r"budget must be an integer >= 1, got True"),
    (7, r"budget 7 is larger than the unlabeled pool: 6 rows \(8 rows - 2 labeled\)"),
])
def test_bad_budget(budget, pattern):
    with pytest.raises(ValueError, match=pattern):
        select("random", _probs(), budget=budget, labeled=[0, 5])


@pytest.mark.parametrize(("labeled", "pattern"), [
    ([1, 8], r"labeled\[1\] = 8 is out of range: probs has 8 rows \(valid indices 0\.\.7\)"),
    ([-1], r"labeled\[0\] = -1 is out of range"),
    ([0.0, 2.0], r"labeled must hold integer row indices, got dtype float64"),
    ([[0, 1]], r"labeled must be a 1-D sequence of row indices, got shape \(1, 2\)"),
    (np.array([True, False]), r"integer row indices, got dtype bool"),
])
def test_bad_labeled_indices(labeled, pattern):
    with pytest.raises(ValueError, match=pattern):
        select("pcoreset", _probs(), budget=1, labeled=labeled)


def test_duplicate_labeled_indices_count_once():
    picks = select("pcoreset", _probs(), budget=6, labeled=[3, 3, 4])
    assert sorted(picks.tolist()) == [0, 1, 2, 5, 6, 7]


def test_unknown_strategy_lists_the_known_ones():
    with pytest.raises(ValueError, match=re.escape("unknown selection strategy 'kcenter'; known: pcoreset")):
        select("kcenter", _probs(), budget=1)


@pytest.mark.parametrize("strategy", ["coreset", "badge"])
def test_feature_strategies_need_valid_features(strategy):
    probs = _probs()
    with pytest.raises(ValueError, match=f"strategy '{strategy}' needs features"):
        select(strategy, probs, budget=1)
    with pytest.raises(ValueError, match="features has 7 rows but probs has 8"):
        select(strategy, probs, budget=1, features=np.ones((7, 2)))
    feats = np.ones((8, 2))
    feats[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"features row 4, column 1 is nan"):
        select(strategy, probs, budget=1, features=feats)


def test_coreset_rejects_all_zero_feature_rows():
    feats = np.ones((8, 2))
    feats[6] = 0
    with pytest.raises(ValueError, match=r"features row 6 is all zeros"):
        select("coreset", _probs(), budget=1, features=feats)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        select("random", _probs(), budget=1, seed=seed)


def test_bad_backend_is_named():
    with pytest.raises(ValueError, match="backend must be one of numpy, numba, torch, auto, got 'jax'"):
        select("pcoreset", _probs(), budget=1, backend="jax")
