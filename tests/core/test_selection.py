"""nucleate.selection: pick-order rules, exact agreement with brute force, coverage, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nucleate.selection import STRATEGIES, class_quotas, select, select_scored

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------ inputs


@st.composite
def dyadic_probs(draw, max_rows: int = 30, max_classes: int = 5) -> np.ndarray:
    """Rows on the grid k/16 summing exactly to 1: all float arithmetic on them is exact; ties abound."""
    n = draw(st.integers(1, max_rows))
    c = draw(st.integers(1, max_classes))
    rows = []
    for _ in range(n):
        cuts = sorted(draw(st.lists(st.integers(0, 16), min_size=c - 1, max_size=c - 1)))
        rows.append(np.diff([0, *cuts, 16]) / 16.0)
    return np.asarray(rows, dtype=np.float64)


@st.composite
def float_probs(draw, max_rows: int = 40, max_classes: int = 6) -> np.ndarray:
    """General float32 rows (Dirichlet), sometimes with duplicated rows."""
    n = draw(st.integers(1, max_rows))
    c = draw(st.integers(1, max_classes))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    probs = rng.dirichlet(np.full(c, draw(st.sampled_from([0.3, 1.0, 5.0]))), size=n).astype(np.float32)
    if n > 2 and draw(st.booleans()):
        probs[rng.integers(0, n, size=n // 3)] = probs[0]
    return probs


@st.composite
def problem(draw, probs_strategy=None):
    """(probs, labeled, budget) with 1 <= budget <= unlabeled rows."""
    probs = draw(st.one_of(dyadic_probs(), float_probs()) if probs_strategy is None else probs_strategy)
    n = len(probs)
    labeled = draw(st.lists(st.integers(0, n - 1), max_size=n - 1, unique=True))
    budget = draw(st.integers(1, n - len(labeled)))
    return probs, np.asarray(labeled, dtype=np.int64), budget


# ------------------------------------------------------------------------------------------ references


def _sqdist32(x: np.ndarray, c: np.ndarray) -> np.float32:
    """The documented distance: float32, squared differences summed class by class, left to right."""
    x, c = x.astype(np.float32), c.astype(np.float32)
    acc = np.float32(x[0] - c[0]) * np.float32(x[0] - c[0])
    for j in range(1, len(x)):
        d = np.float32(x[j] - c[j])
        acc = np.float32(acc + np.float32(d * d))
    return acc


def brute_force_kcenter(points: np.ndarray, budget: int, labeled, dist) -> list[int]:
    """Recompute every candidate's distance to every centre at each pick (no incremental state)."""
    centres = [int(i) for i in labeled]
    picks: list[int] = []
    n = len(points)
    if not centres:
        mean = points.astype(np.float64).mean(axis=0).astype(np.float32)
        best, best_d = 0, None
        for i in range(n):
            d = dist(points[i], mean)
            if best_d is None or d > best_d:  # strict: the lowest index wins ties
                best, best_d = i, d
        picks.append(best)
        centres.append(best)
    while len(picks) < budget:
        best, best_d = None, None
        for i in range(n):
            if i in centres:
                continue
            d = min(dist(points[i], points[c]) for c in centres)
            if best_d is None or d > best_d:
                best, best_d = i, d
        picks.append(best)
        centres.append(best)
    return picks


def coverage_radius(points: np.ndarray, centres: np.ndarray) -> float:
    diff = points[:, None, :].astype(np.float64) - points[centres][None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).min(1).max())


def _diameter(points: np.ndarray) -> float:
    diff = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())


def _features(probs: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([probs, rng.normal(size=(len(probs), 3))], axis=1) + 0.01


# ------------------------------------------------------------------------------------------ properties


@SETTINGS
@given(problem(), st.sampled_from(sorted(STRATEGIES)), st.integers(0, 2**16))
def test_picks_are_unique_unlabeled_and_budget_sized(case, strategy, seed):
    probs, labeled, budget = case
    picks = select(strategy, probs, budget=budget, labeled=labeled, seed=seed, features=_features(probs))
    assert picks.dtype == np.int64 and picks.shape == (budget,)
    assert len(set(picks.tolist())) == budget
    assert not set(picks.tolist()) & set(labeled.tolist())
    assert ((picks >= 0) & (picks < len(probs))).all()


@SETTINGS
@given(problem(dyadic_probs()))
def test_pcoreset_equals_exact_euclidean_brute_force_on_dyadic_rows(case):
    """On k/16 grids float32 arithmetic is exact, so this is the mathematical definition, ties included."""
    probs, labeled, budget = case
    exact = brute_force_kcenter(probs, budget, labeled, lambda x, c: float(((x - c) ** 2).sum()))
    if len(labeled):  # with no labeled rows the mean row (÷N) is not on the grid; see the float32 test
        assert select("pcoreset", probs, budget=budget, labeled=labeled).tolist() == exact


@SETTINGS
@given(problem())
def test_pcoreset_equals_float32_brute_force_ties_included(case):
    probs, labeled, budget = case
    expected = brute_force_kcenter(probs.astype(np.float32), budget, labeled, _sqdist32)
    got = select_scored("pcoreset", probs, budget=budget, labeled=labeled)
    assert got.indices.tolist() == expected
    # reported distances are the nearest-centre distances at pick time
    centres = list(labeled) + []
    for k, i in enumerate(got.indices):
        if centres:
            d = min(_sqdist32(probs[i], probs[c]) for c in centres)
            assert got.scores[k] == pytest.approx(np.sqrt(np.float64(d)), rel=1e-6, abs=1e-12)
        else:
            assert np.isnan(got.scores[k])
        centres.append(i)


def test_ties_go_to_the_lowest_index():
    probs = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], dtype=np.float64)
    # from row 0 every other row is at distance sqrt(2): the lowest index (1) wins, then 3 (2 is now at 0)
    assert select("pcoreset", probs, budget=2, labeled=[0]).tolist() == [1, 3]
    # duplicates of a centre come last and in index order
    assert select("pcoreset", probs, budget=4, labeled=[0]).tolist() == [1, 3, 2, 4]


def test_cold_start_first_pick_is_farthest_from_the_mean_row():
    probs = np.array([[0.4, 0.3, 0.3], [0.34, 0.33, 0.33], [0.0, 0.0, 1.0], [0.3, 0.4, 0.3], [0.3, 0.3, 0.4]])
    picks = select_scored("pcoreset", probs, budget=3)
    mean = probs.mean(axis=0)
    assert picks.indices[0] == int(np.argmax(((probs - mean) ** 2).sum(1))) == 2
    assert np.isnan(picks.scores[0]) and np.isfinite(picks.scores[1:]).all()
    # after the cold-start pick the mean row is not a centre: row 0 is the farthest from row 2
    assert picks.indices[1] == 0


def test_labeled_rows_are_centres_not_candidates():
    probs = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]])
    # with row 2 labeled, row 0 is farthest from it; without labels, row 0 or 2 (tie -> 0) is farthest from mean
    assert select("pcoreset", probs, budget=1, labeled=[2]).tolist() == [0]
    assert select("pcoreset", probs, budget=1, labeled=[0]).tolist() == [2]
    assert select("pcoreset", probs, budget=3, labeled=[0]).tolist() == [2, 3, 1]


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 5), st.lists(st.integers(1, 3), min_size=4, max_size=4), st.integers(0, 2**16))
def test_pcoreset_covers_clustered_data_better_than_random(n_clusters, small_sizes, data_seed):
    """Tight clusters around the simplex vertices, one big and the rest tiny: greedy k-center with budget =
    #clusters hits every cluster (radius <= cluster diameter); random sampling mostly misses small ones."""
    rng = np.random.default_rng(data_seed)
    sizes = [150, *small_sizes[: n_clusters - 1]]
    rows = []
    for k, size in enumerate(sizes):
        centre = np.full(n_clusters, 0.02 / n_clusters)
        centre[k] += 0.98
        rows.append(rng.dirichlet(centre * 400, size=size))
    probs = np.concatenate(rows)
    cluster = np.repeat(np.arange(n_clusters), sizes)
    picks = select("pcoreset", probs, budget=n_clusters)
    assert set(cluster[picks]) == set(range(n_clusters))
    diameter = max(_diameter(probs[cluster == k]) for k in range(n_clusters))
    r_pcore = coverage_radius(probs, picks)
    assert r_pcore <= diameter
    r_random = [coverage_radius(probs, select("random", probs, budget=n_clusters, seed=s)) for s in range(10)]
    assert r_pcore <= min(r_random) + 1e-12
    assert np.mean(r_random) > r_pcore


@SETTINGS
@given(problem(), st.sampled_from(sorted(STRATEGIES)), st.integers(0, 2**16))
def test_same_seed_same_picks(case, strategy, seed):
    probs, labeled, budget = case
    feats = _features(probs)
    a = select(strategy, probs, budget=budget, labeled=labeled, seed=seed, features=feats)
    b = select(strategy, probs.copy(), budget=budget, labeled=list(labeled), seed=seed, features=feats.copy())
    assert a.tolist() == b.tolist()


def test_random_strategies_depend_on_the_seed():
    probs = np.random.default_rng(0).dirichlet(np.ones(4), size=200)
    feats = _features(probs)
    for strategy in ("random", "class_balanced", "badge"):
        runs = {tuple(select(strategy, probs, budget=10, seed=s, features=feats).tolist()) for s in range(5)}
        assert len(runs) > 1, strategy


# ------------------------------------------------------------------------------------------ baselines


def test_entropy_and_margin_rank_by_uncertainty_with_ties_to_lowest_index():
    probs = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3],
                      [0.6, 0.3, 0.1]])
    assert select("entropy", probs, budget=4).tolist() == [1, 3, 4, 2]
    assert select("entropy", probs, budget=2, labeled=[1]).tolist() == [3, 4]
    scored = select_scored("margin", probs, budget=5)
    assert scored.indices.tolist() == [1, 2, 3, 4, 0]
    assert scored.scores.tolist() == pytest.approx([0, 0, 0, 0.3, 1.0])


@pytest.mark.parametrize(("counts", "budget", "expected"), [
    ([0, 0, 0], 6, [2, 2, 2]),
    ([0, 1, 3], 7, [4, 2, 1]),       # weights 1, 1/2, 1/4 -> 4, 2, 1
    ([5, 0], 3, [0, 3]),             # 1/6 : 1 -> shares 0.43, 2.57; the remainder goes to class 1
    ([0, 0, 0], 1, [1, 0, 0]),       # equal remainders go to the lowest class
])
def test_class_quotas(counts, budget, expected):
    quota = class_quotas(np.array(counts), budget)
    assert quota.tolist() == expected and quota.sum() == budget


def test_class_balanced_favours_classes_with_few_labels():
    rng = np.random.default_rng(1)
    pred = np.repeat([0, 1, 2], [300, 300, 300])
    probs = np.full((900, 3), 0.1)
    probs[np.arange(900), pred] = 0.8
    labeled = np.concatenate([np.arange(0, 30), np.arange(300, 303)])  # class 0: 30, class 1: 3, class 2: 0
    picks = select("class_balanced", probs, budget=12, labeled=labeled, seed=int(rng.integers(1000)))
    quota = class_quotas(np.array([30, 3, 0]), 12)
    assert np.bincount(pred[picks], minlength=3).tolist() == quota.tolist()
    # round-robin order: the first picks cover every class with a quota
    assert set(pred[picks[:3]]) == {c for c in range(3) if quota[c] > 0}


def test_class_balanced_fills_a_short_class_at_random():
    probs = np.array([[0.9, 0.1]] * 20 + [[0.1, 0.9]] * 2)
    picks = select("class_balanced", probs, budget=10, seed=3)
    assert len(set(picks.tolist())) == 10
    assert {20, 21} <= set(picks.tolist())  # class 1 (quota 5) had only two rows: both taken, rest filled


def test_coreset_uses_cosine_distance_on_normalised_features():
    feats = np.array([[1.0, 0.0], [10.0, 0.1], [0.0, 3.0], [1.0, 1.0]])
    probs = np.full((4, 2), 0.5)
    scored = select_scored("coreset", probs, budget=2, labeled=[0], features=feats)
    # cosine distance ignores the scale: row 1 is almost row 0's direction; row 2 is orthogonal
    assert scored.indices.tolist() == [2, 3]
    assert scored.scores == pytest.approx([1.0, 1 - np.sqrt(0.5)], abs=1e-6)


def _gradient_embedding(probs: np.ndarray, feats: np.ndarray) -> np.ndarray:
    onehot = np.eye(probs.shape[1])[probs.argmax(1)]
    return np.einsum("nc,nf->ncf", onehot - probs, feats).reshape(len(probs), -1)


def test_badge_first_pick_is_the_largest_gradient_embedding():
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(4), size=50)
    feats = rng.normal(size=(50, 6))
    g = _gradient_embedding(probs, feats)
    labeled = [int(np.argmax(np.linalg.norm(g, axis=1)))]
    norms = np.linalg.norm(g, axis=1)
    norms[labeled] = -1
    assert select("badge", probs, budget=1, labeled=labeled, features=feats)[0] == int(np.argmax(norms))


def test_badge_draws_the_second_centre_with_probability_proportional_to_d_squared():
    probs = np.array([[0.7, 0.3], [0.55, 0.45], [0.2, 0.8], [0.9, 0.1], [0.6, 0.4]])
    feats = np.array([[1.0, 0.5], [0.2, 1.0], [1.5, -0.3], [0.4, 0.4], [1.0, 0.0]])
    g = _gradient_embedding(probs, feats)
    first = int(np.argmax(np.linalg.norm(g, axis=1)))
    d2 = ((g - g[first]) ** 2).sum(1)
    expected = d2 / d2.sum()
    seconds = [select("badge", probs, budget=2, features=feats, seed=s)[1] for s in range(3000)]
    freq = np.bincount(seconds, minlength=len(probs)) / len(seconds)
    assert freq[first] == 0
    assert freq == pytest.approx(expected, abs=0.03)


def test_badge_takes_duplicates_of_centres_last():
    probs = np.array([[0.8, 0.2], [0.8, 0.2], [0.3, 0.7], [0.3, 0.7], [0.5, 0.5]])
    feats = np.array([[1.0, 2.0], [1.0, 2.0], [0.5, 0.1], [0.5, 0.1], [1.0, 1.0]])
    for seed in range(20):
        picks = select("badge", probs, budget=5, features=feats, seed=seed).tolist()
        first_three = picks[:3]
        # one of each distinct embedding before any duplicate
        assert len({tuple(np.round(probs[i], 3)) for i in first_three}) == 3, picks
