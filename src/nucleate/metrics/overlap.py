"""The instance overlap table: every instance metric is computed from one pass over the pixels.

Label images are ``(H, W)`` integer arrays indexed (row, col); ``0`` is background and any other
value an instance id (ids need not be consecutive). :func:`overlap_table` counts, in one
``np.bincount`` (or, for very many instances, one ``np.unique``) over the pixels, the area of
every true and predicted instance and the intersection of every overlapping (true, pred) pair.
Pairs that do not overlap are never materialised, so the cost is O(pixels), not O(instances²).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Overlap", "overlap_table", "check_pair"]

#: Dense contingency (one bincount) up to this many (true + 1) x (pred + 1) cells; sparse above.
_DENSE_CELLS = 1 << 24


@dataclass(frozen=True)
class Overlap:
    """Areas and pairwise intersections of two label images (pixels).

    ``true_ids`` (T,) / ``pred_ids`` (P,): the instance ids present, ascending.
    ``true_area`` (T,) / ``pred_area`` (P,): their areas.
    ``ti``, ``pj``, ``inter`` (M,): indices into ``true_ids`` / ``pred_ids`` and the intersection
    area of every pair that overlaps (``inter > 0``), sorted by (ti, pj).
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    true_area: np.ndarray
    pred_area: np.ndarray
    ti: np.ndarray
    pj: np.ndarray
    inter: np.ndarray

    @property
    def iou(self) -> np.ndarray:
        """(M,) IoU of every overlapping pair."""
        union = self.true_area[self.ti] + self.pred_area[self.pj] - self.inter
        return self.inter / union


def check_pair(true: np.ndarray, pred: np.ndarray, valid: np.ndarray | None = None) -> None:
    """Raise ``ValueError`` unless ``true``/``pred`` (and ``valid``) are same-shape 2-D arrays."""
    true, pred = np.asarray(true), np.asarray(pred)
    if true.ndim != 2 or true.shape != pred.shape:
        raise ValueError(
            f"true and pred must be 2-D label images of the same shape (H, W); got {true.shape} and {pred.shape}"
        )
    for name, a in (("true", true), ("pred", pred)):
        if a.dtype.kind not in "biu":
            raise ValueError(f"{name} must be an integer or boolean label image, got dtype {a.dtype}")
    if valid is not None and np.shape(valid) != true.shape:
        raise ValueError(f"valid mask has shape {np.shape(valid)}, expected {true.shape} like the label images")


def _sequential(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, ids): ``codes`` = labels renumbered 0 (background), 1..N (ids ascending) as intp."""
    flat = labels.ravel()
    if flat.dtype == bool:
        flat = flat.view(np.uint8)
    if flat.dtype.kind == "i" and flat.size and flat.min() < 0:
        raise ValueError(f"label images must not hold negative ids (found {int(flat.min())})")
    top = int(flat.max(initial=0))
    if top <= 4 * flat.size + 1024:  # lookup table: O(pixels + max id)
        present = np.bincount(flat, minlength=top + 1) > 0
        present[0] = False
        ids = np.flatnonzero(present)
        lut = np.zeros(top + 1, dtype=np.intp)
        lut[ids] = np.arange(1, ids.size + 1)
        return lut[flat], ids
    ids, codes = np.unique(flat, return_inverse=True)  # huge ids: sort once
    if ids[0] != 0:
        codes = codes + 1
    else:
        ids = ids[1:]
    return codes.astype(np.intp, copy=False), ids


def overlap_table(true: np.ndarray, pred: np.ndarray, valid: np.ndarray | None = None) -> Overlap:
    """Count instance areas and pairwise intersections of two ``(H, W)`` label images.

    ``valid`` (optional ``(H, W)`` bool) restricts the count to those pixels: outside it both
    images are treated as background, and instances with no valid pixel are absent.
    """
    check_pair(true, pred, valid)
    true, pred = np.asarray(true), np.asarray(pred)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        true = np.where(valid, true, 0)
        pred = np.where(valid, pred, 0)
    t, true_ids = _sequential(true)
    p, pred_ids = _sequential(pred)
    nt, np_ = true_ids.size + 1, pred_ids.size + 1
    if nt * np_ <= _DENSE_CELLS:
        table = np.bincount(t * np_ + p, minlength=nt * np_).reshape(nt, np_)
        true_area = table[1:].sum(1)
        pred_area = table[:, 1:].sum(0)
        ti, pj = np.nonzero(table[1:, 1:])
        inter = table[1:, 1:][ti, pj]
    else:
        true_area = np.bincount(t, minlength=nt)[1:]
        pred_area = np.bincount(p, minlength=np_)[1:]
        both = (t > 0) & (p > 0)
        codes, inter = np.unique(t[both] * np_ + p[both], return_counts=True)
        ti, pj = np.divmod(codes, np_)
        ti, pj = ti - 1, pj - 1
    return Overlap(
        true_ids=true_ids,
        pred_ids=pred_ids,
        true_area=true_area.astype(np.int64),
        pred_area=pred_area.astype(np.int64),
        ti=ti.astype(np.intp),
        pj=pj.astype(np.intp),
        inter=inter.astype(np.int64),
    )
