"""Selection strategies behind one registry.

Each strategy takes validated inputs — ``probs`` (N, C), ``budget``, sorted unique ``labeled`` row
indices, an integer ``seed``, optional ``features`` (N, F), and the k-center backend — and returns a
:class:`Selection`: row indices in pick order (never a labeled row, never a repeat) plus the score each
pick had when it was picked. Strategies that draw at random build their own
``numpy.random.Generator(PCG64(seed))``; the others ignore the seed.

| name | rule | score |
|---|---|---|
| ``pcoreset`` | greedy k-center, Euclidean distance between probability rows, centres = labeled rows | min distance |
| ``coreset`` | greedy k-center on L2-normalised ``features``, cosine distance | min cosine distance |
| ``entropy`` | largest entropy (nats) of the probability row first | entropy |
| ``margin`` | smallest gap between the two largest probabilities first | margin |
| ``random`` | uniform sample without replacement | — |
| ``class_balanced`` | per predicted class, a quota ∝ 1 / (labeled rows predicted as that class + 1) | — |
| ``badge`` | k-means++ seeding on gradient embeddings (onehot(argmax p) − p) ⊗ features | D at pick |

Ties go to the lowest row index in every deterministic rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import entr

from nucleate.selection.cap import GroupCap
from nucleate.selection.kcenter import kcenter_greedy

__all__ = ["Selection", "Strategy", "STRATEGIES", "register", "select_capped"]

_CHUNK_ROWS = 65_536


@dataclass(frozen=True)
class Selection:
    """Rows picked, in pick order, and the strategy's score for each pick (float64, NaN where undefined).

    ``score_name`` says what ``scores`` holds: ``min_distance`` (k-center strategies: distance to the
    nearest centre at pick time), ``entropy``, ``margin``, ``badge_distance``, or ``None``.
    """

    strategy: str
    indices: np.ndarray
    scores: np.ndarray
    score_name: str | None


StrategyFn = Callable[..., Selection]


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: its function, whether it needs ``features``, whether ``seed`` matters, and whether
    it applies a per-group cap itself (``native_cap``: ``fn`` takes ``cap=GroupCap``; see :func:`select_capped`)."""

    name: str
    fn: StrategyFn
    needs_features: bool = False
    uses_seed: bool = False
    native_cap: bool = False


STRATEGIES: dict[str, Strategy] = {}


def register(name: str, *, needs_features: bool = False, uses_seed: bool = False,
             native_cap: bool = False) -> Callable[[StrategyFn], StrategyFn]:
    """Decorator adding a strategy function to :data:`STRATEGIES` under ``name``."""

    def wrap(fn: StrategyFn) -> StrategyFn:
        if name in STRATEGIES:
            raise ValueError(f"selection strategy {name!r} is already registered")
        STRATEGIES[name] = Strategy(name, fn, needs_features, uses_seed, native_cap)
        return fn

    return wrap


def _candidates(n: int, labeled: np.ndarray) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[labeled] = False
    return np.flatnonzero(mask)


def _rowwise(probs: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply ``fn`` to float64 row chunks of ``probs`` -> (N,) float64, without an (N, C) float64 copy."""
    out = np.empty(probs.shape[0], dtype=np.float64)
    for start in range(0, probs.shape[0], _CHUNK_ROWS):
        out[start:start + _CHUNK_ROWS] = fn(np.asarray(probs[start:start + _CHUNK_ROWS], dtype=np.float64))
    return out


def _ranked(name: str, score_name: str, scores: np.ndarray, budget: int, labeled: np.ndarray,
            *, descending: bool) -> Selection:
    cand = _candidates(len(scores), labeled)
    key = -scores[cand] if descending else scores[cand]
    order = cand[np.argsort(key, kind="stable")[:budget]]  # stable: ties keep the lowest index first
    return Selection(name, order.astype(np.int64), scores[order], score_name)


@register("pcoreset", native_cap=True)
def pcoreset(probs, budget, labeled, seed, features, backend, device, cap=None) -> Selection:
    """PCoreSet: greedy k-center in the probability simplex (Euclidean), from the labeled rows."""
    res = kcenter_greedy(probs, budget, labeled=labeled, metric="euclidean", backend=backend, device=device, cap=cap)
    return Selection("pcoreset", res.indices, res.min_distance, "min_distance")


@register("coreset", needs_features=True, native_cap=True)
def coreset(probs, budget, labeled, seed, features, backend, device, cap=None) -> Selection:
    """Core-set (Sener & Savarese): greedy k-center on L2-normalised features, cosine distance."""
    res = kcenter_greedy(features, budget, labeled=labeled, metric="cosine", backend=backend, device=device, cap=cap)
    return Selection("coreset", res.indices, res.min_distance, "min_distance")


def _entropy(p: np.ndarray) -> np.ndarray:
    return entr(p).sum(axis=1)


def _margin(p: np.ndarray) -> np.ndarray:
    if p.shape[1] == 1:
        return p[:, 0].copy()
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


@register("entropy")
def entropy(probs, budget, labeled, seed, features, backend, device) -> Selection:
    """Uncertainty sampling: the rows with the largest predictive entropy (nats)."""
    return _ranked("entropy", "entropy", _rowwise(probs, _entropy), budget, labeled, descending=True)


@register("margin")
def margin(probs, budget, labeled, seed, features, backend, device) -> Selection:
    """Margin sampling: the rows whose two most likely classes are closest."""
    return _ranked("margin", "margin", _rowwise(probs, _margin), budget, labeled, descending=False)


@register("random", uses_seed=True)
def random(probs, budget, labeled, seed, features, backend, device) -> Selection:
    """Uniform random sample of the unlabeled rows (pick order = draw order)."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(_candidates(probs.shape[0], labeled), size=budget, replace=False)
    return Selection("random", picks.astype(np.int64), np.full(budget, np.nan), None)


def _argmax_rows(probs: np.ndarray) -> np.ndarray:
    out = np.empty(probs.shape[0], dtype=np.int64)
    for start in range(0, probs.shape[0], _CHUNK_ROWS):
        out[start:start + _CHUNK_ROWS] = np.argmax(probs[start:start + _CHUNK_ROWS], axis=1)
    return out


def class_quotas(labeled_counts: np.ndarray, budget: int) -> np.ndarray:
    """Integer quotas per class summing to ``budget``, ∝ 1 / (labeled count + 1).

    Largest-remainder rounding; equal remainders go to the lower class index.
    """
    weights = 1.0 / (np.asarray(labeled_counts, dtype=np.float64) + 1.0)
    share = weights / weights.sum() * budget
    quota = np.floor(share).astype(np.int64)
    extra = budget - int(quota.sum())
    quota[np.argsort(-(share - quota), kind="stable")[:extra]] += 1
    return quota


@register("class_balanced", uses_seed=True)
def class_balanced(probs, budget, labeled, seed, features, backend, device) -> Selection:
    """Class-balanced sampling (methods.md §2.8): classes predicted (argmax) for every row; each class gets
    a quota ∝ 1 / (labeled rows predicted as it + 1) and is sampled at random; quotas a class cannot fill
    are filled at random from the remaining rows. Pick order: round-robin over classes, then the fill."""
    rng = np.random.default_rng(seed)
    n, n_classes = probs.shape
    pred = _argmax_rows(probs)
    quota = class_quotas(np.bincount(pred[labeled], minlength=n_classes), budget)
    cand = _candidates(n, labeled)
    by_class = cand[np.argsort(pred[cand], kind="stable")]
    bounds = np.searchsorted(pred[by_class], np.arange(n_classes + 1))
    per_class = []
    for c in range(n_classes):
        members = by_class[bounds[c]:bounds[c + 1]]
        take = min(int(quota[c]), members.size)
        per_class.append(rng.choice(members, size=take, replace=False) if take else members[:0])
    rounds = max((len(p) for p in per_class), default=0)
    picks = [int(p[i]) for i in range(rounds) for p in per_class if i < len(p)]
    short = budget - len(picks)
    if short:
        rest = np.setdiff1d(cand, np.asarray(picks, dtype=np.int64), assume_unique=True)
        picks.extend(int(i) for i in rng.choice(rest, size=short, replace=False))
    return Selection("class_balanced", np.asarray(picks, dtype=np.int64), np.full(budget, np.nan), None)


@register("badge", needs_features=True, uses_seed=True)
def badge(probs, budget, labeled, seed, features, backend, device) -> Selection:
    """BADGE (Ash et al., ICLR 2020): k-means++ seeding on gradient embeddings g = (onehot(argmax p) − p) ⊗ f.

    As in the BADGE paper, seeding runs over the unlabeled rows only (labeled rows are not centres); the
    first centre is the row with the largest ‖g‖; each later one is drawn with probability ∝ D², D =
    Euclidean distance to the nearest chosen centre. ``g`` is never materialised (that would be N·C·F):
    ‖g_i − g_c‖² = ‖a_i‖²‖f_i‖² + ‖a_c‖²‖f_c‖² − 2 (a_i·a_c)(f_i·f_c), one O(N·(C+F)) pass per pick.
    Values below the float32 noise floor (1e-5 · (‖g_i‖² + ‖g_c‖²)) count as 0, so exact duplicates of a
    centre are drawn only once nothing else is left (then the lowest index goes first).
    """
    rng = np.random.default_rng(seed)
    p = np.asarray(probs, dtype=np.float32)
    f = np.asarray(features, dtype=np.float32)
    n = p.shape[0]
    top = _argmax_rows(p)
    rows = np.arange(n)
    a_sq = 1.0 - 2.0 * p[rows, top].astype(np.float64) + np.einsum("ij,ij->i", p, p, dtype=np.float64)
    g_sq = np.maximum(a_sq, 0.0) * np.einsum("ij,ij->i", f, f, dtype=np.float64)
    open_ = np.ones(n, dtype=bool)
    open_[labeled] = False
    d2 = np.full(n, np.inf)
    picks = np.empty(budget, dtype=np.int64)
    scores = np.full(budget, np.nan)
    for k in range(budget):
        if k == 0:
            best = int(np.argmax(np.where(open_, g_sq, -1.0)))
        else:
            weights = np.where(open_, d2, 0.0)
            total = weights.sum()
            if total > 0:
                cum = np.cumsum(weights)
                best = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
                best = min(best, n - 1)
                if not open_[best]:  # guard against round-off at the top end of the cumsum
                    best = int(np.flatnonzero(open_ & (weights > 0))[-1])
            else:
                best = int(np.flatnonzero(open_)[0])
            scores[k] = np.sqrt(d2[best])
        picks[k] = best
        open_[best] = False
        if k + 1 == budget:
            break
        a_c = -p[best].astype(np.float64)
        a_c[top[best]] += 1.0
        dot_a = a_c[top] - p @ a_c.astype(np.float32)
        dot_f = f @ f[best]
        dist = g_sq + g_sq[best] - 2.0 * dot_a.astype(np.float64) * dot_f.astype(np.float64)
        dist[dist < 1e-5 * (g_sq + g_sq[best])] = 0.0
        np.minimum(d2, dist, out=d2)
    return Selection("badge", picks, scores, "badge_distance")


def _take_rows(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` of ``a`` (N, D), keeping a Fortran layout Fortran (k-center's no-copy input)."""
    if a.flags.f_contiguous and not a.flags.c_contiguous:
        return np.take(a.T, rows, axis=1).T
    return a[rows]


def select_capped(entry: Strategy, probs: np.ndarray, budget: int, labeled: np.ndarray, seed: int,
                  features: np.ndarray | None, backend: str, device: str | None, *, groups: np.ndarray,
                  cap: int) -> Selection:
    """Run the registered strategy ``entry`` (validated inputs) with at most ``cap`` (>= 1) picks per group of
    ``groups`` ((N,) int64, -1 = no group); the rule and how each kind of strategy follows it:
    :mod:`nucleate.selection.cap`. Returns up to ``budget`` picks in order with their scores."""
    counter = GroupCap(groups, cap)
    if entry.native_cap:
        return entry.fn(probs, budget, labeled, seed, features, backend, device, cap=counter)
    n = probs.shape[0]
    taken = np.zeros(n, bool)
    taken[labeled] = True
    blocked = np.zeros(n, bool)  # rows of full groups (taken ones stay in the problem as labeled rows)
    picks: list[int] = []
    scores: list[float] = []
    sel = None
    while len(picks) < budget:
        if (blocked & ~taken).any():
            rows = np.flatnonzero(~blocked | taken)
            sub_probs = _take_rows(probs, rows)
            sub_feats = None if features is None else _take_rows(features, rows)
            sub_labeled = np.searchsorted(rows, np.flatnonzero(taken)).astype(np.int64)
        else:
            rows, sub_probs, sub_feats, sub_labeled = None, probs, features, np.flatnonzero(taken).astype(np.int64)
        open_rows = (n if rows is None else rows.size) - sub_labeled.size
        if open_rows == 0:
            break
        sel = entry.fn(sub_probs, min(budget - len(picks), open_rows), sub_labeled, seed, sub_feats, backend, device)
        overflow = False
        for i, score in zip((sel.indices if rows is None else rows[sel.indices]).tolist(), sel.scores.tolist(),
                            strict=True):
            if counter.is_full(i):  # the strategy's next pick is in a full group: run it again without that group
                overflow = True
                break
            picks.append(i)
            scores.append(score)
            taken[i] = True
            if (full := counter.add(i)) is not None:
                blocked[full] = True
        if not overflow:
            break
    return Selection(entry.name, np.asarray(picks, np.int64), np.asarray(scores, np.float64),
                     None if sel is None else sel.score_name)
