"""The torch k-center backend returns the numpy backend's picks and distances bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nucleate.selection import kcenter_greedy, select, select_scored


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
