"""The torch and numba k-center backends return the numpy backend's picks and distances bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nucleate.selection import kcenter_greedy, select, select_scored
from nucleate.selection.kcenter import _sqdist_numpy, columns_float32, resolve_backend


@st.composite
def case(draw):
    n = draw(st.integers(1, 300))
    c = draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    probs = rng.dirichlet(np.full(c, draw(st.sampled_from([0.2, 1.0, 10.0]))), size=n)
    if n > 3 and draw(st.booleans()):
        probs[rng.integers(0, n, size=n // 2)] = probs[1]  # many exact ties
    labeled = rng.choice(n, size=draw(st.integers(0, n - 1)), replace=False)
    budget = draw(st.integers(1, n - len(labeled)))
    return probs, labeled, budget


def _same(a, b):
    assert a.indices.tolist() == b.indices.tolist()
    np.testing.assert_array_equal(a.scores, b.scores)  # NaN == NaN here; bitwise otherwise


@settings(max_examples=60, deadline=None)
@given(case(), st.sampled_from(["pcoreset", "coreset"]))
def test_torch_cpu_equals_numpy(problem, strategy):
    probs, labeled, budget = problem
    feats = probs + 0.05
    ref = select_scored(strategy, probs, budget=budget, labeled=labeled, features=feats)
    got = select_scored(strategy, probs, budget=budget, labeled=labeled, features=feats, backend="torch",
                        device="cpu")
    _same(ref, got)


def test_torch_cpu_equals_numpy_across_chunk_boundaries():
    """More rows than one numpy chunk (262,144) and several torch CPU chunks (32,768)."""
    rng = np.random.default_rng(7)
    probs = np.asfortranarray(rng.dirichlet(np.ones(4), size=300_000).astype(np.float32))
    a = kcenter_greedy(probs, 12, labeled=np.array([5, 299_999]))
    b = kcenter_greedy(probs, 12, labeled=np.array([5, 299_999]), backend="torch", device="cpu")
    assert a.indices.tolist() == b.indices.tolist()
    np.testing.assert_array_equal(a.min_distance, b.min_distance)


def test_auto_backend_runs_where_it_can():
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=50)
    assert select("pcoreset", probs, budget=5, backend="auto").tolist() == select("pcoreset", probs,
                                                                                  budget=5).tolist()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        select("pcoreset", np.eye(3), budget=1, backend="torch", device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_numpy():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(50), size=200_000).astype(np.float32)
    probs[rng.integers(0, 200_000, size=5_000)] = probs[0]
    for labeled in (np.zeros(0, np.int64), rng.choice(200_000, size=50, replace=False)):
        ref = select_scored("pcoreset", probs, budget=200, labeled=labeled)
        got = select_scored("pcoreset", probs, budget=200, labeled=labeled, backend="torch", device="cuda")
        _same(ref, got)


# ----------------------------------------------------------------------------------------- numba


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def numba_threads(request):
    """Run the numba backend with 1 and with 2 threads (restored afterwards; the setting is per thread)."""
    import numba

    if request.param > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"numba has {numba.config.NUMBA_NUM_THREADS} thread(s)")
    before = numba.get_num_threads()
    numba.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        numba.set_num_threads(before)


@settings(max_examples=40, deadline=None)
@given(case(), st.sampled_from(["pcoreset", "coreset"]))
def test_numba_equals_numpy(problem, strategy):
    probs, labeled, budget = problem
    feats = probs + 0.05
    ref = select_scored(strategy, probs, budget=budget, labeled=labeled, features=feats)
    got = select_scored(strategy, probs, budget=budget, labeled=labeled, features=feats, backend="numba")
    _same(ref, got)


def _tied_probs(n: int, c: int, seed: int) -> np.ndarray:
    """Quantised probability rows (multiples of 1/8): few distinct rows, so exact distance ties everywhere,
    spread over several numba blocks (16,384 rows), plus exact duplicates of row 1."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(8, np.ones(c) / c, size=n).astype(np.float32)
    probs = counts / np.float32(8)
    probs[rng.integers(0, n, size=n // 4)] = probs[1]
    return np.asfortranarray(probs)


def test_numba_equals_numpy_with_ties_across_blocks(numba_threads):
    n = 3 * 16_384 + 77
    for c, labeled, budget in [(5, np.zeros(0, np.int64), 40), (3, np.array([0, 16_384, n - 1]), 60),
                               (50, np.array([7]), 25)]:
        probs = _tied_probs(n, c, seed=c)
        ref = kcenter_greedy(probs, budget, labeled=labeled)
        got = kcenter_greedy(probs, budget, labeled=labeled, backend="numba")
        assert got.indices.tolist() == ref.indices.tolist()
        np.testing.assert_array_equal(got.min_distance, ref.min_distance)
        assert np.count_nonzero(got.min_distance[1:] == got.min_distance[1:].max()) > 0


def test_numba_picks_everything_in_numpy_order(numba_threads):
    """Budget = the whole unlabeled pool: once the distinct rows are used up every minimum is 0 (an n-way tie)."""
    probs = _tied_probs(300, 4, seed=1)
    for labeled in (np.zeros(0, np.int64), np.array([3, 4, 299])):
        budget = 300 - labeled.size
        ref = kcenter_greedy(probs, budget, labeled=labeled)
        got = kcenter_greedy(probs, budget, labeled=labeled, backend="numba")
        assert got.indices.tolist() == ref.indices.tolist()
        assert sorted(got.indices.tolist()) == sorted(set(range(300)) - set(labeled.tolist()))


def test_numba_budget_edges():
    one = np.array([[0.25, 0.75]], np.float32)
    assert kcenter_greedy(one, 1, backend="numba").indices.tolist() == [0]  # cold start on one row
    probs = _tied_probs(40, 3, seed=2)
    for labeled in (np.zeros(0, np.int64), np.arange(39)):
        ref = kcenter_greedy(probs, 1, labeled=labeled)
        got = kcenter_greedy(probs, 1, labeled=labeled, backend="numba")
        assert got.indices.tolist() == ref.indices.tolist()
        np.testing.assert_array_equal(got.min_distance, ref.min_distance)
    col = _tied_probs(20_000, 1, seed=0)  # one class: d = (x - c)^2 only
    assert (kcenter_greedy(col, 3, backend="numba").indices.tolist()
            == kcenter_greedy(col, 3).indices.tolist())


def test_numba_distances_are_the_numpy_bits(numba_threads):
    """The fused pass rounds like the numpy path (no FMA, class-by-class float32 sums): every squared
    distance and the running minimum equal np.minimum of the numpy distances bit for bit."""
    from nucleate.selection._kcenter_numba import BLOCK, update_argmax

    rng = np.random.default_rng(5)
    cols = columns_float32(np.asfortranarray(rng.dirichlet(np.full(50, 0.3), size=40_000).astype(np.float32)))
    n = cols.shape[1]
    acc, tmp = np.empty(n, np.float32), np.empty(n, np.float32)
    mind = np.full(n, np.inf, np.float32)
    ref = np.full(n, np.inf, np.float32)
    for row in (0, 123, 39_999):
        centre = cols[:, row].copy()
        got = update_argmax(cols, centre, mind, BLOCK)
        np.minimum(ref, _sqdist_numpy(cols, centre, 0, n, acc, tmp), out=ref)
        np.testing.assert_array_equal(mind, ref)
        assert got == int(np.argmax(ref))


def test_numba_nan_is_a_clear_error():
    probs = np.array([[0.5, 0.5], [np.nan, 0.5], [0.2, 0.8]], np.float32)
    with pytest.raises(ValueError, match="row 1 is not finite"):
        kcenter_greedy(probs, 2, backend="numba")


def test_auto_on_cpu_is_numba():
    assert resolve_backend("auto", "cpu") == ("numba", None)
    assert resolve_backend("numba", "cuda") == ("numba", None)  # CPU only; device is ignored like numpy's
