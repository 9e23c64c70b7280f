"""Nucleus instances from the network's maps: marker-controlled watershed inside the thresholded foreground.

1. foreground mask = ``foreground >= threshold``;
2. markers: ``heatmap`` - local maxima of the point heat-map inside the mask, at least ``peak_threshold``
   high and ``peak_distance_px`` apart; ``distance`` - local maxima of the mask's Euclidean distance
   transform, ``peak_distance_px`` apart (one marker per connected component's "bulge");
3. a connected component of the mask without a marker becomes one instance (the whole component is its
   marker), so a nucleus the heat-map missed is never dropped;
4. :func:`skimage.segmentation.watershed` from the markers on ``-foreground`` (heat-map markers) or on
   ``-distance`` (distance markers), restricted to the mask;
5. instances smaller than ``min_area_px`` pixels are removed and the rest relabelled 1..K
   (:func:`skimage.segmentation.relabel_sequential`, keeping the marker order: heat-map peaks by decreasing
   height, distance peaks likewise, then unmarked components).

Centres are instance centroids (:func:`nucleate.annotations.centroids_xy`: x = column, y = row, origin at the
top-left pixel's corner, so the centre of pixel [r, c] is (c + 0.5, r + 0.5)); an instance's score is the
mean foreground probability over its pixels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.morphology import h_maxima
from skimage.segmentation import relabel_sequential, watershed

from nucleate.annotations import centroids_xy

__all__ = ["DISTANCE_H_PX", "MARKERS", "instances_from_maps"]

#: marker sources of :func:`instances_from_maps`
MARKERS = ("heatmap", "distance")
#: a distance-transform maximum is a marker only if it stands this many pixels above its saddle
DISTANCE_H_PX = 1.0


def instances_from_maps(
    foreground: np.ndarray,
    heatmap: np.ndarray,
    *,
    threshold: float,
    markers: str,
    peak_threshold: float,
    peak_distance_px: float,
    min_area_px: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels, centres, scores)`` from ``foreground`` and ``heatmap`` ((H, W) float probabilities).

    ``labels`` (H, W) int32, 0 background, instances 1..K; ``centres`` (K, 2) float64 (x, y) pixels of
    instance k + 1 in row k; ``scores`` (K,) float32 mean foreground probability. ``markers`` is one of
    :data:`MARKERS` (``peak_threshold``, the lowest heat-map peak used, matters only for ``heatmap``);
    ``peak_distance_px`` is the minimum distance between two markers (pixels, rounded, at least 1);
    ``min_area_px`` the smallest instance kept (pixels). See the module docstring for the steps.
    """
    foreground = np.asarray(foreground, dtype=np.float32)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if foreground.ndim != 2 or heatmap.shape != foreground.shape:
        raise ValueError(f"foreground and heatmap must be (H, W) arrays of one shape, got {foreground.shape} "
                         f"and {heatmap.shape}")
    if markers not in MARKERS:
        raise ValueError(f"markers must be one of {', '.join(MARKERS)}; got {markers!r}")
    mask = foreground >= threshold
    components, n_components = ndi.label(mask)
    if n_components == 0:
        return np.zeros(foreground.shape, np.int32), np.zeros((0, 2)), np.zeros(0, np.float32)
    min_distance = max(1, round(peak_distance_px))
    if markers == "heatmap":
        surface = -foreground
        peaks = peak_local_max(np.where(mask, heatmap, 0.0), min_distance=min_distance, threshold_abs=peak_threshold,
                               exclude_border=False)
    else:
        distance = ndi.distance_transform_edt(mask)
        surface = -distance
        peaks = peak_local_max(distance, min_distance=min_distance, labels=components, exclude_border=False)
        regional = h_maxima(distance, DISTANCE_H_PX).astype(bool)
        peaks = peaks[regional[peaks[:, 0], peaks[:, 1]]]
    seeds = np.zeros(foreground.shape, np.int32)
    seeds[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    unmarked = np.setdiff1d(np.arange(1, n_components + 1), components[peaks[:, 0], peaks[:, 1]])
    if unmarked.size:
        lookup = np.zeros(n_components + 1, np.int32)
        lookup[unmarked] = np.arange(len(peaks) + 1, len(peaks) + 1 + unmarked.size, dtype=np.int32)
        whole = lookup[components]
        seeds = np.where(whole > 0, whole, seeds)
    labels = watershed(surface, seeds, mask=mask).astype(np.int32, copy=False)
    areas = np.bincount(labels.ravel())
    small = np.flatnonzero(areas < min_area_px)
    small = small[small != 0]
    if small.size:
        labels[np.isin(labels, small)] = 0
    labels = relabel_sequential(labels)[0].astype(np.int32, copy=False)
    ids, centres = centroids_xy(labels)
    counts = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)
    sums = np.bincount(labels.ravel(), weights=foreground.ravel(), minlength=counts.size)
    scores = (sums[ids] / counts[ids]).astype(np.float32)
    return labels, centres, scores
