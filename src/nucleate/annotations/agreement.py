"""Inter-annotator agreement on point annotations and a consensus point set for training.

Two annotators' points on one image are matched one-to-one (Hungarian assignment on Euclidean
distance, pixels); a pair closer than ``radius`` px can match, farther pairs never do. Among the
matchings with the most pairs, the one with the smallest total distance is used. Only points within
``radius`` of each other interact, so the problem splits into small independent components (found
with a k-d tree) and scales to thousands of points per image.

Agreement of annotators A and B on an image: ``tp`` = matched pairs, ``F1 = 2 tp / (n_A + n_B)``
(:attr:`nucleate.metrics.PointMatch.f1` with A as truth: symmetric, precision of B against A = recall of
A against B); two empty sets agree perfectly (F1 = 1).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pyarrow as pa

from nucleate import metrics
from nucleate.annotations.points import group_rows, points_table, points_xy, rows_by_image
from nucleate.io.tables import SCHEMAS

__all__ = [
    "match_points",
    "PairAgreement",
    "AgreementReport",
    "agreement",
    "consensus_points",
    "consensus_table",
]


def match_points(a: np.ndarray, b: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of points ``a`` (N, 2) and ``b`` (M, 2), (x, y) pixels, within ``radius`` px.

    Returns ``(ia, ib)``: int64 index arrays of equal length, pair ``k`` matches ``a[ia[k]]`` with
    ``b[ib[k]]``; sorted by ``ia``. Maximum number of pairs, then minimum total distance — the same
    matching as detection F1 (:func:`nucleate.metrics.match_points`), which does the work.
    """
    pairs = metrics.match_points(a, b, radius).pairs
    return pairs[:, 0], pairs[:, 1]


@dataclass
class PairAgreement:
    """Agreement of two annotators pooled over the images both annotated."""

    annotator_a: str
    annotator_b: str
    images: int = 0
    tp: int = 0
    n_a: int = 0
    n_b: int = 0
    mean_distance_px: float = float("nan")

    @property
    def f1(self) -> float:
        """Pooled ``2 tp / (n_a + n_b)`` (:attr:`nucleate.metrics.PointMatch.f1`, A as truth); 1.0 with no points."""
        return metrics.PointMatch(np.zeros((0, 2), np.int64), self.tp, self.n_b - self.tp, self.n_a - self.tp).f1

    def as_dict(self) -> dict[str, Any]:
        return {"annotator_a": self.annotator_a, "annotator_b": self.annotator_b, "images": self.images,
                "matched": self.tp, "points_a": self.n_a, "points_b": self.n_b, "f1": round(self.f1, 6),
                "mean_distance_px": None if math.isnan(self.mean_distance_px)
                else round(self.mean_distance_px, 4)}


@dataclass
class AgreementReport:
    """Per annotator pair (pooled) and per image agreement; images with >= 2 annotators only."""

    radius: float
    pairs: list[PairAgreement] = field(default_factory=list)
    per_image: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        f1s = [p["f1"] for p in self.per_image]
        return {"radius_px": self.radius, "images": len(self.per_image),
                "mean_image_f1": round(float(np.mean(f1s)), 6) if f1s else None,
                "pairs": [p.as_dict() for p in self.pairs], "per_image": self.per_image}


def _groups(points: pa.Table) -> dict[str, dict[str, np.ndarray]]:
    """image_id -> annotator -> row indices."""
    who = points.column("annotator").to_numpy(zero_copy_only=False)
    return {img: {a: rows[r] for a, r in group_rows(who[rows]).items()}
            for img, rows in rows_by_image(points).items()}


def agreement(points: pa.Table, radius: float,
              annotators: Mapping[str, Sequence[str]] | None = None) -> AgreementReport:
    """Agreement for every image annotated by >= 2 annotators of a ``points`` table.

    ``annotators`` (image_id -> annotators who submitted) adds annotators who submitted *no* points on an
    image (an empty annotation is an opinion too); without it only annotators with points count.
    """
    xy = points_xy(points)
    groups = _groups(points)
    if annotators:
        for img, names in annotators.items():
            for name in names:
                groups.setdefault(img, {}).setdefault(name, np.zeros(0, np.int64))
    report = AgreementReport(radius=float(radius))
    pairs: dict[tuple[str, str], PairAgreement] = {}
    dists: dict[tuple[str, str], list[float]] = {}
    for img in sorted(groups):
        by = groups[img]
        if len(by) < 2:
            continue
        image_pairs = []
        for a, b in combinations(sorted(by), 2):
            pa_, pb_ = xy[by[a]], xy[by[b]]
            match = metrics.match_points(pa_, pb_, radius)
            ia, ib = match.pairs[:, 0], match.pairs[:, 1]
            rec = pairs.setdefault((a, b), PairAgreement(a, b))
            rec.images += 1
            rec.tp += match.tp
            rec.n_a += len(pa_)
            rec.n_b += len(pb_)
            dists.setdefault((a, b), []).extend(np.hypot(*(pa_[ia] - pb_[ib]).T).tolist())
            image_pairs.append(match.f1)
        report.per_image.append({"image_id": img, "annotators": sorted(by),
                                 "f1": round(float(np.mean(image_pairs)), 6)})
    for key, rec in sorted(pairs.items()):
        if dists[key]:
            rec.mean_distance_px = float(np.mean(dists[key]))
        report.pairs.append(rec)
    return report


def consensus_points(
    sets: Sequence[np.ndarray], radius: float, min_fraction: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Consensus of several annotators' point sets on one image.

    Annotators are processed in the given order; each one's points are matched (:func:`match_points`)
    to the current clusters' mean positions, joining the matched cluster or opening a new one, so a
    cluster never holds two points of one annotator. A cluster is kept when it holds at least
    ``ceil(min_fraction * len(sets))`` annotators' points (with 2 annotators and 0.5: either one; with 3:
    two). Returns ``(xy (K, 2) cluster means, members (K, len(sets)) int64 row index into each set or -1)``.
    """
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
    n_sets = len(sets)
    sums = np.zeros((0, 2))
    members = np.zeros((0, n_sets), np.int64)
    for s, pts in enumerate(sets):
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        counts = (members[:, :s] >= 0).sum(1) if s else np.zeros(len(members), np.int64)
        means = sums / np.maximum(counts, 1)[:, None]
        ia, ib = match_points(pts, means, radius) if len(means) else (np.zeros(0, np.int64),) * 2
        members[ib, s] = ia
        sums[ib] += pts[ia]
        new = np.setdiff1d(np.arange(len(pts)), ia)
        add = np.full((len(new), n_sets), -1, np.int64)
        add[:, s] = new
        members = np.concatenate([members, add]) if len(members) else add
        sums = np.concatenate([sums, pts[new]])
    votes = (members >= 0).sum(1)
    need = max(1, math.ceil(min_fraction * n_sets - 1e-9))
    keep = votes >= need
    xy = sums[keep] / votes[keep][:, None] if keep.any() else np.zeros((0, 2))
    return xy.reshape(-1, 2), members[keep]


def consensus_table(points: pa.Table, radius: float, min_fraction: float = 0.5,
                    annotators: Mapping[str, Sequence[str]] | None = None) -> pa.Table:
    """A ``points`` table for training: per image, the consensus of its annotators.

    Images with one annotator keep that annotator's points unchanged. Images with several get
    :func:`consensus_points` (annotators in sorted order): ``annotator`` = ``"consensus"``,
    ``label`` = the most frequent label among the cluster's points (ties: alphabetical first),
    ``origin`` = ``prediction`` only if every point of the cluster was an accepted prediction,
    ``annotation_id`` = null, ``created_at`` = the latest of the cluster's points. ``annotators`` as in
    :func:`agreement` (annotators who submitted an empty annotation count as voters).
    """
    groups = _groups(points)
    if annotators:
        for img, names in annotators.items():
            if img in groups:
                for name in names:
                    groups[img].setdefault(name, np.zeros(0, np.int64))
    cols = {name: points.column(name).to_numpy(zero_copy_only=False)
            for name in ("label", "round", "origin")}
    task_ids = points.column("task_id").to_pylist()
    created = points.column("created_at").to_pylist()
    xy = points_xy(points)
    keep_rows: list[np.ndarray] = []
    out: dict[str, list] = {k: [] for k in SCHEMAS["points"].names}
    for img in sorted(groups):
        by = groups[img]
        names = sorted(by)
        if len(names) == 1:
            keep_rows.append(by[names[0]])
            continue
        rows = [by[n] for n in names]
        centre, members = consensus_points([xy[r] for r in rows], radius, min_fraction)
        for k in range(len(centre)):
            idx = np.asarray([rows[s][members[k, s]] for s in range(len(names)) if members[k, s] >= 0])
            labels = Counter(cols["label"][idx].tolist())
            best = max(labels.values())
            out["image_id"].append(img)
            out["x"].append(float(centre[k, 0]))
            out["y"].append(float(centre[k, 1]))
            out["label"].append(sorted(lbl for lbl, c in labels.items() if c == best)[0])
            out["annotator"].append("consensus")
            out["task_id"].append(task_ids[idx[0]])
            out["annotation_id"].append(None)
            out["round"].append(int(cols["round"][idx].max()))
            out["origin"].append("prediction" if (cols["origin"][idx] == "prediction").all() else "manual")
            out["created_at"].append(max(created[i] for i in idx))
    schema = SCHEMAS["points"]
    single = points.select(schema.names).take(pa.array(np.concatenate(keep_rows) if keep_rows
                                                      else np.zeros(0, np.int64)))
    merged = points_table(out, source="consensus points")
    return pa.concat_tables([single.cast(schema), merged.cast(schema)])
