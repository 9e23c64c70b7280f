"""nucleate.metrics: hand-computed cases, empty cases, a naive per-instance reference, detection F1."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from skimage.draw import disk

from nucleate.metrics import (
    aji,
    detection_f1,
    dice,
    match_points,
    object_dice,
    overlap_table,
    panoptic_quality,
    segmentation_scores,
)
from nucleate.metrics import overlap as overlap_module

_spec = importlib.util.spec_from_file_location(
    "naive_metrics", Path(__file__).resolve().parents[2] / "benchmarks" / "naive_metrics.py"
)
naive = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(naive)


def square(shape=(20, 20), box=(0, 0, 10, 10), value=1):
    out = np.zeros(shape, np.int32)
    r0, c0, r1, c1 = box
    out[r0:r1, c0:c1] = value
    return out


def all_scores(t, p):
    s = segmentation_scores(t, p)
    return {"dice": s.dice, "aji": s.aji, "object_dice": s.object_dice, "dq": s.pq.dq, "sq": s.pq.sq, "pq": s.pq.pq}


def test_perfect_prediction_with_other_ids_scores_one():
    t = square(value=3) + square(box=(12, 12, 18, 19), value=9)
    p = np.where(t == 3, 70000, np.where(t == 9, 5, 0)).astype(np.int64)  # ids need not match or be small
    assert all_scores(t, p) == pytest.approx(dict.fromkeys(all_scores(t, t), 1.0))
    assert panoptic_quality(t, p).tp == 2


def test_empty_cases():
    empty = np.zeros((8, 8), np.int32)
    one = square((8, 8), (1, 1, 4, 4))
    for fn in (dice, aji, object_dice):
        assert fn(empty, empty) == 1.0
        assert fn(one, empty) == 0.0 and fn(empty, one) == 0.0
    both = panoptic_quality(empty, empty)
    assert (both.dq, both.sq, both.pq) == (1.0, 1.0, 1.0)
    miss = panoptic_quality(one, empty)
    assert (miss.dq, miss.sq, miss.pq, miss.fn, miss.fp) == (0.0, 0.0, 0.0, 1, 0)
    assert detection_f1(np.zeros((0, 2)), np.zeros((0, 2)), 5) == 1.0
    assert detection_f1([[1.0, 1.0]], np.zeros((0, 2)), 5) == 0.0


def test_one_instance_split_60_40():
    t = square()  # 100 px
    p = square(box=(0, 0, 10, 6), value=1) + square(box=(0, 6, 10, 10), value=2)  # 60 + 40 px
    s = all_scores(t, p)
    # AJI: G pairs with the 60-px half (IoU .6): C = 60, U = 100 + unused 40 = 140
    assert s["aji"] == pytest.approx(60 / 140)
    # PQ: one TP (IoU .6), one FP: DQ = 1 / 1.5, SQ = .6
    assert (s["dq"], s["sq"], s["pq"]) == pytest.approx((2 / 3, 0.6, 0.4))
    # object Dice: G side 2*60/160 = .75; S side .6 * .75 + .4 * (2*40/140)
    assert s["object_dice"] == pytest.approx(0.5 * (0.75 + 0.6 * 0.75 + 0.4 * 80 / 140))
    assert s["dice"] == 1.0


def test_one_instance_split_in_halves_tie_goes_to_lowest_id():
    t = square()
    p = square(box=(0, 0, 10, 5), value=4) + square(box=(0, 5, 10, 10), value=2)
    assert aji(t, p) == pytest.approx(50 / 150)
    pq = panoptic_quality(t, p)  # IoU exactly 0.5 is not > 0.5
    assert (pq.tp, pq.fp, pq.fn, pq.pq) == (0, 2, 1, 0.0)
    assert object_dice(t, p) == pytest.approx(2 / 3)


def tie_scene(low_id_small: bool):
    """One 6 px true instance and two predictions with exactly tied IoU 1/3 but different sizes:
    a 2 px one inside it (IoU 2/6) and a 10 px one covering its other 4 px (IoU 4/12)."""
    t = np.zeros((4, 8), np.int32)
    t[0, :6] = 1
    p = np.zeros_like(t)
    small, large = (3, 8) if low_id_small else (8, 3)
    p[0, :2] = small
    p[0, 2:6] = large
    p[1, :6] = large
    return t, p


def test_aji_asymmetric_exact_tie_goes_to_the_lowest_prediction_id():
    t, p = tie_scene(low_id_small=True)  # small = id 3 wins: C = 2, U = 6 + unused large 10
    assert aji(t, p) == pytest.approx(2 / 16)
    t, p = tie_scene(low_id_small=False)  # large = id 3 wins: C = 4, U = 12 + unused small 2
    assert aji(t, p) == pytest.approx(4 / 14)
    assert aji(t, p + (p > 0) * 1000) == pytest.approx(4 / 14)  # only the order of ids matters


def test_object_dice_asymmetric_overlap_tie_goes_to_the_lowest_prediction_id():
    t = np.zeros((4, 8), np.int32)
    t[0, :8] = 1  # 8 px; both predictions overlap it by 4 px
    for small, large, g_side in ((2, 5, 8 / 12), (5, 2, 8 / 20)):
        p = np.zeros_like(t)
        p[0, :4] = small  # 4 px inside: Dice 2*4/12
        p[0, 4:] = large  # 4 px inside + 8 px outside (12 px): Dice 2*4/20
        p[1, :8] = large
        # G side: the lowest-id prediction among the tied ones; S side: 4/16 * 2/3 + 12/16 * 2/5
        assert object_dice(t, p) == pytest.approx(0.5 * (g_side + 0.25 * 8 / 12 + 0.75 * 8 / 20))


def test_aji_missed_nucleus_adds_only_its_area():
    """Kumar AJI: a true instance no prediction touches adds |G| to U. (Qu et al.'s AJI_fast would pair it
    with prediction 1 and add |G| + |S_1| = 50 + 100: 100 / 250 = 0.4 instead of 100 / 150.)"""
    t = square(box=(0, 0, 10, 10), value=1) + square(box=(12, 10, 17, 20), value=2)  # 100 px + 50 px
    p = square(box=(0, 0, 10, 10), value=1)  # finds the first, misses the second
    assert aji(t, p) == pytest.approx(100 / 150)
    p2 = p + square(box=(15, 0, 19, 5), value=2)  # plus an unused 20 px prediction: counted once
    assert aji(t, p2) == pytest.approx(100 / 170)


def test_two_instances_merged_into_one():
    t = square(box=(0, 0, 10, 5), value=1) + square(box=(0, 5, 10, 10), value=2)
    p = square(value=7)
    # both G pick the merged prediction: C = 50 + 50, U = 100 + 100 (Kumar AJI counts it twice)
    assert aji(t, p) == pytest.approx(0.5)
    pq = panoptic_quality(t, p)
    assert (pq.tp, pq.fp, pq.fn, pq.dq) == (0, 1, 2, 0.0)
    assert object_dice(t, p) == pytest.approx(2 / 3)
    assert dice(t, p) == 1.0


def test_shifted_square_hand_computed():
    t = square()
    p = square(box=(0, 2, 10, 12))  # 80 px overlap, 120 px union
    s = all_scores(t, p)
    assert s == pytest.approx({"dice": 0.8, "aji": 80 / 120, "object_dice": 0.8, "dq": 1.0, "sq": 80 / 120,
                               "pq": 80 / 120})


@pytest.mark.parametrize("shift", [0, 1, 3, 6, 12])
def test_shifted_disks_match_pixel_counting(shift):
    t = np.zeros((80, 80), np.int32)
    p = np.zeros((80, 80), np.int32)
    t[disk((20, 20), 8)] = 1
    t[disk((44, 40), 10)] = 2
    p[disk((20, 20 + shift), 8)] = 5
    p[disk((44 + shift, 40), 10)] = 6
    a1, a2 = (t == 1), (p == 5)
    b1, b2 = (t == 2), (p == 6)
    iou_a = (a1 & a2).sum() / (a1 | a2).sum()
    iou_b = (b1 & b2).sum() / (b1 | b2).sum()
    s = segmentation_scores(t, p)
    assert s.aji == pytest.approx(((a1 & a2).sum() + (b1 & b2).sum()) / ((a1 | a2).sum() + (b1 | b2).sum()))
    hits = [v for v in (iou_a, iou_b) if v > 0.5]
    assert s.pq.tp == len(hits)
    assert s.pq.sq == pytest.approx(np.mean(hits) if hits else 0.0)
    assert s.dice == pytest.approx(2 * ((t > 0) & (p > 0)).sum() / ((t > 0).sum() + (p > 0).sum()))


def random_labels(rng, shape=(48, 48), n=12):
    out = np.zeros(shape, np.int32)
    for _ in range(n):
        r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        out[disk((r, c), rng.uniform(2, 8), shape=shape)] = rng.integers(1, 40)  # overlaps, reused ids
    return out


@pytest.mark.parametrize("seed", range(12))
def test_agrees_with_naive_per_instance_reference(seed):
    rng = np.random.default_rng(seed)
    t, p = random_labels(rng), random_labels(rng)
    assert aji(t, p) == pytest.approx(naive.naive_aji(t, p))
    pq = panoptic_quality(t, p)
    assert (pq.dq, pq.sq, pq.pq) == pytest.approx(naive.naive_pq(t, p))
    assert object_dice(t, p) == pytest.approx(naive.naive_object_dice(t, p))


def test_sparse_path_equals_dense_path(monkeypatch):
    rng = np.random.default_rng(5)
    t, p = random_labels(rng, n=30), random_labels(rng, n=30)
    dense = segmentation_scores(t, p)
    monkeypatch.setattr(overlap_module, "_DENSE_CELLS", 0)
    assert segmentation_scores(t, p) == dense
    huge = np.where(t > 0, t.astype(np.int64) + 2**40, 0)  # huge ids take the np.unique route
    monkeypatch.undo()
    assert segmentation_scores(huge, p) == dense


def test_valid_mask_restricts_scoring():
    t = square()
    p = square(box=(0, 0, 10, 5))
    valid = np.zeros_like(t, bool)
    valid[:, :5] = True  # the right half of the true square is "ignore"
    assert dice(t, p) == pytest.approx(2 / 3)
    assert dice(t, p, valid=valid) == 1.0
    assert segmentation_scores(t, p, valid=valid).aji == 1.0
    o = overlap_table(t, p, valid)
    assert o.true_area.tolist() == [50]


def test_bool_masks_are_one_instance():
    t = square() > 0
    assert aji(t, t) == 1.0 and dice(t, np.zeros_like(t)) == 0.0


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.zeros((4, 4), int), np.zeros((4, 5), int)), "same shape"),
        ((np.zeros((4, 4), float), np.zeros((4, 4), int)), "integer or boolean"),
        ((np.zeros(4, int), np.zeros(4, int)), "2-D"),
        ((np.full((2, 2), -1), np.zeros((2, 2), int)), "negative"),
    ],
)
def test_bad_label_images(args, message):
    with pytest.raises(ValueError, match=message):
        aji(*args)


def test_pq_threshold_below_half_is_refused():
    with pytest.raises(ValueError, match="iou_threshold"):
        panoptic_quality(square(), square(), iou_threshold=0.3)
    assert panoptic_quality(square(), square(box=(0, 2, 10, 12)), iou_threshold=0.7).tp == 0


def test_detection_hungarian_beats_greedy():
    true = np.array([[0.0, 0.0], [3.0, 0.0]])
    pred = np.array([[1.6, 0.0], [4.9, 0.0]])  # greedy closest-first pairs pred 0 with true 1 and loses one
    m = match_points(true, pred, radius=2.0)
    assert m.pairs.tolist() == [[0, 0], [1, 1]]
    assert (m.tp, m.fp, m.fn, m.f1) == (2, 0, 0, 1.0)


def test_detection_radius_and_counts():
    true = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 10.0]])
    pred = np.array([[10.0, 10.0], [53.0, 54.0], [200.0, 200.0], [10.5, 10.0]])
    m = match_points(true, pred, radius=5.0)  # (53, 54) is exactly 5 px away: a hit
    assert (m.tp, m.fp, m.fn) == (2, 2, 1)
    assert m.pairs.tolist() == [[0, 0], [1, 1]]
    assert detection_f1(true, pred, 5.0) == pytest.approx(2 / (2 + 1.5))
    assert (m.precision, m.recall) == pytest.approx((0.5, 2 / 3))
    assert detection_f1(true, pred, 4.9) == pytest.approx(1 / (1 + 2.5))


@pytest.mark.parametrize("seed", range(4))
def test_detection_maximises_matches_like_a_dense_assignment(seed):
    rng = np.random.default_rng(seed)
    true = rng.uniform(0, 60, (40, 2))
    pred = np.concatenate([true[:30] + rng.normal(0, 2.5, (30, 2)), rng.uniform(0, 60, (15, 2))])
    m = match_points(true, pred, radius=4.0)
    d = np.linalg.norm(true[:, None] - pred[None], axis=-1)
    cost = np.where(d <= 4.0, d, 1e6)
    r, c = linear_sum_assignment(cost)
    ok = cost[r, c] < 1e6
    assert m.tp == ok.sum()
    assert d[m.pairs[:, 0], m.pairs[:, 1]].sum() == pytest.approx(cost[r[ok], c[ok]].sum())
    assert len(set(m.pairs[:, 0])) == m.tp == len(set(m.pairs[:, 1]))


def test_detection_bad_input():
    with pytest.raises(ValueError, match=r"true_points\[1\]"):
        match_points([[0.0, 0.0], [np.nan, 1.0]], [[0.0, 0.0]], 3)
    with pytest.raises(ValueError, match="shape"):
        match_points(np.zeros((3, 3)), np.zeros((1, 2)), 3)
    with pytest.raises(ValueError, match="radius"):
        match_points(np.zeros((1, 2)), np.zeros((1, 2)), 0)
