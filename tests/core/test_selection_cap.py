"""nucleate.selection with a per-group cap (tiles of one slide per round): every strategy, exact references."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.special import entr

from nucleate.selection import STRATEGIES, select_capped, select_scored


def _problem(n=60, c=4, slides=3, seed=0):
    """Dirichlet probability rows; groups: rows 0..n-11 spread over ``slides`` slides, the last 10 plain (-1)."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(c, 0.5), size=n).astype(np.float32)
    groups = np.full(n, -1, np.int64)
    groups[: n - 10] = rng.integers(0, slides, size=n - 10)
    return probs, groups


def _sqdist(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The documented float32 distance, accumulated class by class (bit-equal to the k-center backends)."""
    acc = (points[:, 0] - centre[0]) ** 2
    for j in range(1, points.shape[1]):
        acc = acc + (points[:, j] - centre[j]) ** 2
    return acc


def masked_kcenter(points, budget, labeled, groups, cap):
    """Reference: the greedy k-center loop itself, masking a group's rows out once it holds ``cap`` picks.
    Every pick recomputes the distance of every allowed row to every centre (no incremental state)."""
    n = len(points)
    centres = [int(i) for i in labeled]
    allowed = np.ones(n, bool)
    allowed[centres] = False
    picks, dists, count = [], [], {}
    while len(picks) < budget and allowed.any():
        if centres:
            d = np.min([_sqdist(points, points[c]) for c in centres], axis=0)
        else:  # cold start: the row farthest from the mean row
            d = _sqdist(points, points.astype(np.float64).mean(axis=0).astype(np.float32))
        d = np.where(allowed, d, -1.0)
        best = int(np.argmax(d))
        picks.append(best)
        dists.append(np.nan if not centres else float(np.sqrt(np.float64(d[best]))))
        centres.append(best)
        allowed[best] = False
        g = groups[best]
        if g >= 0:
            count[g] = count.get(g, 0) + 1
            if count[g] >= cap:
                allowed[groups == g] = False
    return picks, dists


def _per_group(picks, groups):
    g = groups[np.asarray(picks, np.int64)]
    return np.bincount(g[g >= 0], minlength=groups.max() + 1)


@pytest.mark.parametrize("labeled", [[], [3, 17, 55]])
@pytest.mark.parametrize(("cap", "order", "backend"), [(1, "C", "numpy"), (2, "F", "numpy"), (4, "C", "numpy"),
                                                       (1, "F", "numba"), (2, "C", "torch")])
def test_pcoreset_with_a_cap_is_the_masked_greedy_loop(labeled, cap, order, backend):
    probs, groups = _problem()
    sel = select_scored("pcoreset", np.asarray(probs, order=order), budget=15, labeled=labeled, groups=groups,
                        group_cap=cap, backend=backend, device="cpu")
    picks, dists = masked_kcenter(probs, 15, labeled, groups, cap)
    if cap == 1:  # the cap changes the batch here (3 slides, 10 plain rows)
        assert picks != select_scored("pcoreset", probs, budget=15, labeled=labeled).indices.tolist()
    assert sel.indices.tolist() == picks
    np.testing.assert_array_equal(sel.scores, np.asarray(dists))  # bit for bit, NaN for a cold-start pick
    assert _per_group(sel.indices, groups).max() <= cap
    assert not set(sel.indices.tolist()) & set(labeled)


def test_entropy_with_a_cap_skips_full_slides_in_rank_order():
    probs, groups = _problem(seed=1)
    labeled = [0, 1]
    score = entr(probs.astype(np.float64)).sum(axis=1)
    expected, count = [], {}
    for i in np.argsort(-score, kind="stable").tolist():
        g = groups[i]
        if i in labeled or (g >= 0 and count.get(g, 0) >= 2):
            continue
        expected.append(i)
        count[g] = count.get(g, 0) + 1
        if len(expected) == 12:
            break
    sel = select_scored("entropy", probs, budget=12, labeled=labeled, groups=groups, group_cap=2)
    assert sel.indices.tolist() == expected
    np.testing.assert_array_equal(sel.scores, score[expected])


@pytest.mark.parametrize(("strategy", "backend"), [(s, "numpy") for s in sorted(STRATEGIES)]
                         + [("pcoreset", "numba"), ("pcoreset", "torch"), ("coreset", "torch")])
def test_every_strategy_respects_the_cap_and_fills_the_budget_when_it_can(strategy, backend):
    probs, groups = _problem(seed=2)
    feats = np.random.default_rng(3).normal(size=(len(probs), 5))
    kw = {"labeled": [5, 6], "seed": 7, "features": feats, "groups": groups, "backend": backend, "device": "cpu"}
    sel = select_scored(strategy, probs, budget=14, group_cap=1, **kw)
    assert len(sel.indices) == 13  # 3 slides x 1 tile + the 10 plain images: the cap shortens the batch
    assert len(set(sel.indices.tolist())) == 13 and not {5, 6} & set(sel.indices.tolist())
    assert _per_group(sel.indices, groups).tolist() == [1, 1, 1]
    sel = select_scored(strategy, probs, budget=8, group_cap=3, **kw)
    assert len(sel.indices) == 8 and _per_group(sel.indices, groups).max() <= 3


@pytest.mark.parametrize("strategy", ["pcoreset", "random", "entropy", "badge"])
def test_without_groups_or_cap_the_picks_are_unchanged(strategy):
    probs, groups = _problem(seed=4)
    feats = np.random.default_rng(3).normal(size=(len(probs), 5))
    kw = {"budget": 20, "labeled": [2], "seed": 11, "features": feats}
    base = select_scored(strategy, probs, **kw)
    for extra in ({"groups": groups}, {"group_cap": 1}, {"groups": groups, "group_cap": 0},
                  {"groups": groups, "group_cap": None}, {"groups": np.full(len(probs), -1), "group_cap": 1},
                  {"groups": groups, "group_cap": 20}):
        sel = select_scored(strategy, probs, **kw, **extra)
        np.testing.assert_array_equal(sel.indices, base.indices)
        np.testing.assert_array_equal(sel.scores, base.scores)


@pytest.mark.parametrize(("groups", "cap", "message"), [
    (np.zeros(5, np.int64), 1, "one code per probs row"),
    (np.zeros(60, np.float64), 1, "integer codes"),
    (np.full(60, -2), 1, r"groups\[0\] = -2"),
    (np.zeros(60, np.int64), -1, "group_cap must be an integer"),
    (np.zeros(60, np.int64), 1.5, "group_cap must be an integer"),
])
def test_bad_groups_or_cap_are_one_clear_error(groups, cap, message):
    probs, _ = _problem()
    with pytest.raises(ValueError, match=message):
        select_scored("pcoreset", probs, budget=3, groups=groups, group_cap=cap)


@pytest.mark.parametrize("labeled", [[], [3, 17, 55]])
def test_the_re_run_path_gives_the_native_k_center_picks(labeled):
    """Both ways of applying the cap are the same rule: pcoreset forced through the re-run path agrees bit for bit."""
    probs, groups = _problem(seed=5)
    entry = STRATEGIES["pcoreset"]
    args = (probs, 20, np.asarray(labeled, np.int64), 0, None, "numpy", None)
    native = select_capped(entry, *args, groups=groups, cap=2)
    rerun = select_capped(replace(entry, native_cap=False), *args, groups=groups, cap=2)
    np.testing.assert_array_equal(rerun.indices, native.indices)
    np.testing.assert_array_equal(rerun.scores, native.scores)
