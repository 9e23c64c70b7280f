"""A simulated annotator: ground-truth nucleus centres turned into the clicks a person would make.

Used by ``nucleate annotate-sim`` (demo, tests, benchmarks) to exercise the whole annotation path
without a person. Deterministic for a given ``numpy.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nucleate.annotations.agreement import match_points

__all__ = ["SimulatedClicks", "simulate_clicks"]


@dataclass
class SimulatedClicks:
    """Clicks on one image: ``xy`` (K, 2) pixels (x, y), ``labels`` (K,), ``origin`` (K,) ``manual`` or
    ``prediction`` (a pre-annotation kept unchanged), and how many nuclei were missed / falsely clicked."""

    xy: np.ndarray
    labels: list[str]
    origin: list[str]
    missed: int
    false_clicks: int


def simulate_clicks(
    gt_xy: np.ndarray,
    gt_labels: Sequence[str],
    width: int,
    height: int,
    rng: np.random.Generator,
    *,
    jitter_px: float = 1.0,
    miss_rate: float = 0.05,
    false_click_rate: float = 0.02,
    false_label: str | None = None,
    predictions_xy: np.ndarray | None = None,
    prediction_labels: Sequence[str] | None = None,
    accept_radius_px: float = 6.0,
) -> SimulatedClicks:
    """Clicks for one ``width`` x ``height`` image with ground-truth centres ``gt_xy`` (N, 2).

    Each nucleus is missed with probability ``miss_rate``. A kept nucleus with a pre-annotation of the
    same label within ``accept_radius_px`` (one-to-one matching) is accepted as is (origin
    ``prediction``: the person left it in place); the others are clicked at the centre plus Gaussian
    noise of ``jitter_px`` sd per axis (origin ``manual``). Pre-annotations that match no kept nucleus
    are deleted. Then Poisson(``false_click_rate`` * N) false clicks land uniformly in the image with
    ``false_label`` (default: the first ground-truth label, or ``"nucleus"``). Clicks are clipped to
    the image.
    """
    gt_xy = np.asarray(gt_xy, np.float64).reshape(-1, 2)
    labels = list(gt_labels)
    n = len(gt_xy)
    keep = rng.random(n) >= miss_rate
    kept = np.flatnonzero(keep)
    xy = gt_xy[kept] + rng.normal(0.0, jitter_px, (len(kept), 2)) if jitter_px > 0 else gt_xy[kept].copy()
    origin = ["manual"] * len(kept)
    if predictions_xy is not None and len(kept):
        pred = np.asarray(predictions_xy, np.float64).reshape(-1, 2)
        plabels = list(prediction_labels) if prediction_labels is not None else ["nucleus"] * len(pred)
        ia, ib = match_points(gt_xy[kept], pred, accept_radius_px)
        for a, b in zip(ia.tolist(), ib.tolist(), strict=True):
            if plabels[b] == labels[kept[a]]:
                xy[a] = pred[b]
                origin[a] = "prediction"
    n_false = int(rng.poisson(false_click_rate * n)) if false_click_rate > 0 else 0
    false_xy = rng.uniform(0.0, 1.0, (n_false, 2)) * np.array([width, height], np.float64)
    label_false = false_label or (labels[0] if labels else "nucleus")
    all_xy = np.concatenate([xy, false_xy]).reshape(-1, 2)
    manual = np.asarray(origin + ["manual"] * n_false) == "manual"
    all_xy[manual, 0] = np.clip(all_xy[manual, 0], 0.0, float(width))
    all_xy[manual, 1] = np.clip(all_xy[manual, 1], 0.0, float(height))
    return SimulatedClicks(
        xy=all_xy,
        labels=[labels[i] for i in kept] + [label_false] * n_false,
        origin=origin + ["manual"] * n_false,
        missed=int(n - len(kept)),
        false_clicks=n_false,
    )
