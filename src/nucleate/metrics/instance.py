"""Pixel and instance metrics for nuclei segmentation (definitions: docs/methods.md section 5).

All functions take ``(H, W)`` label images indexed (row, col): ``0`` = background, any other
integer = an instance id (ids need not be consecutive; a boolean mask is one instance). An
optional ``valid`` ``(H, W)`` bool mask restricts scoring to those pixels (outside, both images
count as background) - e.g. the labeled (non-ignore) pixels of a pseudo-mask.

Empty cases (documented, tested): when neither image has a foreground pixel every score is
``1.0`` (a perfect answer to an empty image); when exactly one is empty every score is ``0.0``.
Scores are per image; average them per image (as Qu et al.) or pool the counts - say which.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nucleate.metrics.overlap import Overlap, check_pair, overlap_table

__all__ = [
    "PQResult",
    "SegmentationScores",
    "dice",
    "aji",
    "object_dice",
    "panoptic_quality",
    "segmentation_scores",
]


@dataclass(frozen=True)
class PQResult:
    """Panoptic quality: ``dq`` = TP / (TP + FP/2 + FN/2), ``sq`` = mean IoU of TP pairs, ``pq`` = dq·sq."""

    dq: float
    sq: float
    pq: float
    tp: int
    fp: int
    fn: int


@dataclass(frozen=True)
class SegmentationScores:
    """Every metric of one image from one overlap table (see the module docstring)."""

    dice: float
    aji: float
    object_dice: float
    pq: PQResult
    n_true: int
    n_pred: int

    def as_dict(self) -> dict[str, float]:
        """Flat ``{name: value}`` (dq, sq, pq spelled out), e.g. for a JSON report."""
        return {"dice": self.dice, "aji": self.aji, "object_dice": self.object_dice, "dq": self.pq.dq,
                "sq": self.pq.sq, "pq": self.pq.pq, "n_true": self.n_true, "n_pred": self.n_pred}


def dice(true: np.ndarray, pred: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Pixel Dice (F1) of the foregrounds: 2|P∩G| / (|P| + |G|); 1.0 when both are empty."""
    check_pair(true, pred, valid)
    t, p = np.asarray(true) != 0, np.asarray(pred) != 0
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        t, p = t & valid, p & valid
    return _dice_counts(int(np.count_nonzero(t & p)), int(np.count_nonzero(t)), int(np.count_nonzero(p)))


def _dice_counts(inter: int, n_true: int, n_pred: int) -> float:
    total = n_true + n_pred
    return 1.0 if total == 0 else 2.0 * inter / total


def _best_per_group(group: np.ndarray, score: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Index (into the pair arrays) of the highest-``score`` pair of every ``group`` value present;
    exact ties go to the lowest ``other`` index, i.e. the lowest instance id (ids are ascending). Equal
    ratios such as 2/6 and 4/12 are equal floats (division is correctly rounded), so they tie exactly."""
    order = np.lexsort((other, -score, group))
    first = np.ones(order.size, dtype=bool)
    first[1:] = group[order][1:] != group[order][:-1]
    return order[first]


def _aji(o: Overlap) -> float:
    if o.true_ids.size == 0 and o.pred_ids.size == 0:
        return 1.0
    union_pairs = o.true_area[o.ti] + o.pred_area[o.pj] - o.inter
    best = _best_per_group(o.ti, o.inter / union_pairs, o.pj)  # one pair per true instance that overlaps
    c = int(o.inter[best].sum())
    u = int(union_pairs[best].sum())
    matched_true = np.zeros(o.true_ids.size, dtype=bool)
    matched_true[o.ti[best]] = True
    used_pred = np.zeros(o.pred_ids.size, dtype=bool)
    used_pred[o.pj[best]] = True
    u += int(o.true_area[~matched_true].sum()) + int(o.pred_area[~used_pred].sum())
    return c / u


def _object_dice(o: Overlap) -> float:
    nt, npred = o.true_ids.size, o.pred_ids.size
    if nt == 0 and npred == 0:
        return 1.0
    if nt == 0 or npred == 0:
        return 0.0
    pair_dice = 2.0 * o.inter / (o.true_area[o.ti] + o.pred_area[o.pj])
    halves = []
    for group, other, area in ((o.ti, o.pj, o.true_area), (o.pj, o.ti, o.pred_area)):
        best = _best_per_group(group, o.inter.astype(np.float64), other)  # the most-overlapping partner
        per = np.zeros(area.size)
        per[group[best]] = pair_dice[best]
        halves.append(float((per * area).sum() / area.sum()))
    return 0.5 * (halves[0] + halves[1])


def _pq(o: Overlap, iou_threshold: float) -> PQResult:
    if not 0.5 <= iou_threshold < 1.0:
        raise ValueError(
            f"iou_threshold must be in [0.5, 1) (matches need IoU > threshold, unique from 0.5 up); got {iou_threshold}"
        )
    nt, npred = o.true_ids.size, o.pred_ids.size
    if nt == 0 and npred == 0:
        return PQResult(1.0, 1.0, 1.0, 0, 0, 0)
    iou = o.iou
    hit = iou > iou_threshold
    tp = int(hit.sum())
    fp, fn = npred - tp, nt - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(iou[hit].sum() / tp) if tp else 0.0
    return PQResult(dq=dq, sq=sq, pq=dq * sq, tp=tp, fp=fp, fn=fn)


def aji(true: np.ndarray, pred: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Aggregated Jaccard Index of Kumar et al. 2017 (docs/methods.md section 5).

    Each true instance G_i that overlaps a prediction is paired with the prediction S_j of highest IoU
    (one prediction may serve several true instances); C sums |G_i ∩ S_j| and U sums |G_i ∪ S_j| over
    these pairs. U also gets the area of every true instance that overlaps no prediction (a missed
    nucleus adds |G_i| only) and, once each, of every prediction no true instance picked. AJI = C / U;
    1.0 when both images are empty, 0.0 when exactly one is.

    Ties: an exact IoU tie (e.g. 2/6 and 4/12) goes to the lowest prediction id, as the first maximum
    in Qu et al.'s ``AJI_fast``. HoVer-Net's ``get_fast_aji`` gives the same value apart from ties, which
    its IoU = inter / (union + 1e-6) tips toward the pair with the larger union.

    Qu et al.'s ``AJI_fast`` (WeaklySegPointAnno ``accuracy.py``) differs when:

    * a nucleus is missed: its all-zero IoU row makes ``argmax`` pick prediction 1 (the lowest id), so
      U gets |G_i| + |S_1| for every missed nucleus and S_1 counts as used. With m missed nuclei its U
      exceeds this one's by m·|S_1|, less |S_1| once if no true instance overlaps S_1: a lower AJI;
    * there is no prediction at all: ``AJI_fast`` fails (``argmax`` of an empty axis); here 0.0;
    * ids are not connected components: Qu's ``compute_metrics`` first relabels both images with
      ``skimage.measure.label`` (touching instances with different ids merge, a split id becomes
      several); here the ids are scored as given. ``AJI_fast`` also needs consecutive ids 0..N.

    Unused predictions are counted once in both.
    """
    return _aji(overlap_table(true, pred, valid))


def object_dice(true: np.ndarray, pred: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Object-level Dice (Sirinukunwattana et al. 2017).

    ½[Σ_i γ_i Dice(G_i, S*(G_i)) + Σ_j σ_j Dice(S_j, G*(S_j))] with γ_i, σ_j the area shares and
    S*(G_i) the prediction with the largest intersection with G_i (a tie goes to the lowest prediction id,
    like the first maximum in Qu et al.'s ``accuracy_object_level``; likewise G*(S_j) the lowest true id;
    Dice 0 when none overlaps); 1.0 when both are empty.
    """
    return _object_dice(overlap_table(true, pred, valid))


def panoptic_quality(
    true: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5, valid: np.ndarray | None = None
) -> PQResult:
    """Panoptic quality (Kirillov 2019; Graham 2019 for nuclei).

    Pairs with IoU > ``iou_threshold`` (>= 0.5, so each instance has at most one partner) are true
    positives; unmatched predictions are FP, unmatched true instances FN. Both empty: dq = sq = pq = 1.
    """
    return _pq(overlap_table(true, pred, valid), iou_threshold)


def segmentation_scores(
    true: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5, valid: np.ndarray | None = None
) -> SegmentationScores:
    """Pixel Dice, AJI, object Dice and PQ of one image from a single overlap table."""
    o = overlap_table(true, pred, valid)
    return SegmentationScores(
        dice=_dice_counts(int(o.inter.sum()), int(o.true_area.sum()), int(o.pred_area.sum())),
        aji=_aji(o),
        object_dice=_object_dice(o),
        pq=_pq(o, iou_threshold),
        n_true=int(o.true_ids.size),
        n_pred=int(o.pred_ids.size),
    )
