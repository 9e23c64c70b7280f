"""Point matching, inter-annotator F1 and consensus (pure)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nucleate.annotations.agreement import agreement, consensus_points, consensus_table, match_points
from nucleate.io import SCHEMAS, validate_table


def _brute(a, b, radius):
    """Best matching by enumeration: most pairs, then least total distance."""
    best = (0, 0.0)
    d = np.hypot(*(a[:, None, :] - b[None, :, :]).transpose(2, 0, 1)) if len(a) and len(b) else None
    for k in range(min(len(a), len(b)), 0, -1):
        found = False
        for ia in itertools.combinations(range(len(a)), k):
            for ib in itertools.permutations(range(len(b)), k):
                dist = d[list(ia), list(ib)]
                if (dist <= radius).all():
                    total = float(dist.sum())
                    if not found or total < best[1]:
                        best, found = (k, total), True
        if found:
            return best
    return best


points = st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), max_size=5)


@settings(max_examples=150, deadline=None)
@given(a=points, b=points, radius=st.sampled_from([1.0, 2.5, 4.0]))
def test_match_points_is_a_maximum_matching_of_minimum_distance(a, b, radius):
    a = np.asarray(a, float).reshape(-1, 2)
    b = np.asarray(b, float).reshape(-1, 2)
    ia, ib = match_points(a, b, radius)
    assert len(set(ia.tolist())) == len(ia) and len(set(ib.tolist())) == len(ib)
    dist = np.hypot(*(a[ia] - b[ib]).T) if len(ia) else np.zeros(0)
    assert (dist <= radius).all()
    k, total = _brute(a, b, radius)
    assert len(ia) == k
    assert dist.sum() == pytest.approx(total, abs=1e-9)


def test_match_points_prefers_more_pairs_over_shorter_ones():
    # greedy nearest-neighbour would take (1, 0)-(1.2, 0) and leave two points unmatched
    a = np.array([[0.0, 0.0], [1.0, 0.0]])
    b = np.array([[1.2, 0.0], [2.0, 0.0]])
    ia, ib = match_points(a, b, radius=1.5)
    assert ia.tolist() == [0, 1] and ib.tolist() == [0, 1]


def _table(rows):
    cols = {k: [] for k in SCHEMAS["points"].names}
    for image_id, who, x, y, *rest in rows:
        label = rest[0] if rest else "nucleus"
        origin = rest[1] if len(rest) > 1 else "manual"
        for k, v in (("image_id", image_id), ("x", x), ("y", y), ("label", label), ("annotator", who),
                     ("task_id", 1), ("annotation_id", hash(who) % 1000), ("round", 1), ("origin", origin),
                     ("created_at", datetime(2025, 1, 1, tzinfo=UTC))):
            cols[k].append(v)
    return validate_table("points", pa.table({k: pa.array(v, type=SCHEMAS["points"].field(k).type)
                                              for k, v in cols.items()}))


def test_pairwise_f1_by_hand():
    t = _table([
        ("img", "a", 10, 10), ("img", "a", 50, 50), ("img", "a", 90, 90),
        ("img", "b", 11, 10), ("img", "b", 52, 49),                      # misses the third, 2 matched
        ("img2", "a", 5, 5), ("img2", "b", 30, 30),                     # 0 matched
        ("solo", "a", 1, 1),                                            # one annotator only: ignored
    ])
    rep = agreement(t, radius=4.0)
    (pair,) = rep.pairs
    assert (pair.annotator_a, pair.annotator_b, pair.images) == ("a", "b", 2)
    assert (pair.tp, pair.n_a, pair.n_b) == (2, 4, 3)
    assert pair.f1 == pytest.approx(2 * 2 / 7)
    per = {p["image_id"]: p["f1"] for p in rep.per_image}
    assert per == {"img": pytest.approx(2 * 2 / 5), "img2": 0.0}
    assert pair.mean_distance_px == pytest.approx((1.0 + np.hypot(2, 1)) / 2)


def test_an_empty_annotation_counts_as_an_opinion():
    t = _table([("img", "a", 10, 10)])
    rep = agreement(t, radius=4.0, annotators={"img": ["a", "b"]})
    assert rep.pairs[0].f1 == 0.0 and rep.pairs[0].n_b == 0
    both_empty = agreement(_table([("img", "a", 10, 10)]).slice(0, 0), radius=4.0, annotators={"img": ["a", "b"]})
    assert both_empty.pairs[0].f1 == 1.0 and both_empty.per_image[0]["f1"] == 1.0


def test_consensus_majority_of_three():
    a = np.array([[10.0, 10.0], [50.0, 50.0], [80.0, 20.0]])
    b = np.array([[11.0, 10.0], [51.0, 50.0]])                # misses one
    c = np.array([[10.0, 11.0], [90.0, 90.0]])                # misses two, one false click
    xy, members = consensus_points([a, b, c], radius=4.0, min_fraction=0.5)
    order = np.argsort(xy[:, 0])
    np.testing.assert_allclose(xy[order], [[31 / 3, 31 / 3], [50.5, 50.0]])
    assert members.shape == (2, 3)
    # with min_fraction 1/3 every cluster survives
    xy_all, _ = consensus_points([a, b, c], radius=4.0, min_fraction=0.3)
    assert len(xy_all) == 4


def test_consensus_table_merges_multi_annotator_images_and_keeps_single_ones():
    t = _table([
        ("img", "a", 10, 10, "nucleus", "prediction"), ("img", "b", 12, 10, "nucleus", "prediction"),
        ("img", "a", 40, 40, "micronucleus"), ("img", "b", 41, 40, "nucleus"), ("img", "c", 40, 41, "micronucleus"),
        ("solo", "a", 1, 1),
    ])
    out = consensus_table(t, radius=4.0, min_fraction=0.5, annotators={"img": ["a", "b", "c"]})
    rows = sorted(out.to_pylist(), key=lambda r: (r["image_id"], r["x"]))
    assert [(r["image_id"], r["annotator"]) for r in rows] == [("img", "consensus"), ("img", "consensus"),
                                                               ("solo", "a")]
    first, second = rows[0], rows[1]
    # point at ~(11, 10) is only held by a and b: 2 of 3 votes >= 0.5 * 3 -> kept
    assert (first["x"], first["y"], first["origin"], first["annotation_id"]) == (11.0, 10.0, "prediction", None)
    assert second["label"] == "micronucleus" and second["origin"] == "manual"
    assert second["x"] == pytest.approx(121 / 3)
