"""The classical baseline a lab tries first: Otsu threshold + distance-transform watershed, no learning.

:func:`segment_classical` is a fixed reference, not a tuned method: its only input besides the image is the
nucleus radius ``r`` (pixels), and every constant is a named module-level fraction of ``r`` below, so a
number reported for "the classical baseline" always means the same pipeline:

1. **gray**: :func:`nucleate.io.images.percentile_stretch` to float32 0..1 (the project's one stretch);
   RGB becomes its luminance (0.299 R + 0.587 G + 0.114 B).
2. **smooth**: Gaussian, sigma = :data:`SMOOTH_SIGMA` · r (removes pixel noise, keeps nucleus edges).
3. **threshold**: Otsu (:func:`skimage.filters.threshold_otsu`), foreground = above the threshold.
   **Polarity rule**: nuclei are the minority phase, so when more than half of the image is above the
   threshold the foreground is inverted (dark nuclei on a bright background: H&E / brightfield RGB,
   inverted fluorescence).
4. **clean**: holes filled (:func:`scipy.ndimage.binary_fill_holes`), connected components smaller than
   :data:`MIN_AREA` · r² pixels removed (a nucleus of radius r has ~3.14 r²).
5. **split**: Euclidean distance transform of the mask; markers = its local maxima at least
   :data:`MIN_PEAK_DISTANCE` · r apart (:func:`skimage.feature.peak_local_max`, per connected component;
   a component without a peak gets one at its deepest pixel); watershed of -distance inside the mask.
6. **relabel** 1..N (:func:`skimage.segmentation.relabel_sequential`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import relabel_sequential, watershed

from nucleate.io.images import percentile_stretch

__all__ = ["MIN_AREA", "MIN_PEAK_DISTANCE", "SMOOTH_SIGMA", "LUMINANCE", "segment_classical"]

#: Gaussian smoothing sigma, as a fraction of the nucleus radius (r = 20 px -> sigma 2 px)
SMOOTH_SIGMA = 0.1
#: smallest kept object, in units of r² pixels (r = 20 px -> 80 px, ~6 % of a nucleus' area)
MIN_AREA = 0.2
#: smallest distance between two watershed markers, as a fraction of r (r = 20 px -> 10 px)
MIN_PEAK_DISTANCE = 0.5
#: RGB -> gray weights (ITU-R BT.601 luma)
LUMINANCE = (0.299, 0.587, 0.114)


def segment_classical(image: np.ndarray, nucleus_radius_px: float) -> np.ndarray:
    """Instance labels of the nuclei of ``image`` by Otsu + distance-transform watershed (module docstring).

    ``image``: ``(H, W)`` gray or ``(H, W, 3)`` RGB, any integer or float dtype. ``nucleus_radius_px``: the
    typical nucleus radius in pixels (> 0). Returns ``(H, W)`` ``int32``: 0 background, 1..N nuclei. A flat
    image (no contrast) gives no nucleus. Raises ``ValueError`` for another shape or a bad radius.
    """
    image = np.asarray(image)
    r = float(nucleus_radius_px)
    if not np.isfinite(r) or r <= 0:
        raise ValueError(f"nucleus_radius_px must be a positive number of pixels, got {nucleus_radius_px}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
        raise ValueError(f"expected an (H, W) gray or (H, W, 3) RGB image, got shape {image.shape}")
    gray = percentile_stretch(image, dtype=np.float32)
    if gray.ndim == 3:
        gray = gray @ np.asarray(LUMINANCE, dtype=np.float32)
    smooth = ndi.gaussian_filter(gray, sigma=SMOOTH_SIGMA * r)
    empty = np.zeros(image.shape[:2], np.int32)
    if not smooth.max() > smooth.min():
        return empty
    fg = smooth > threshold_otsu(smooth)
    if fg.mean() > 0.5:  # nuclei are the minority phase: dark nuclei on a bright background
        fg = ~fg
    fg = ndi.binary_fill_holes(fg)
    components, n = ndi.label(fg)
    if n == 0:
        return empty
    area = np.bincount(components.ravel(), minlength=n + 1)
    small = area < MIN_AREA * r * r
    small[0] = True
    fg = ~small[components]
    components[~fg] = 0
    if not fg.any():
        return empty
    distance = ndi.distance_transform_edt(fg)
    peaks = peak_local_max(distance, min_distance=max(1, round(MIN_PEAK_DISTANCE * r)), labels=components,
                           exclude_border=False)
    markers = np.zeros(components.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    ids = np.flatnonzero(~small)
    has_peak = np.zeros(small.size, bool)
    has_peak[components[tuple(peaks.T)]] = True
    lonely = ids[~has_peak[ids]]
    if lonely.size:  # components without a peak: one marker at their deepest pixel
        deepest = ndi.maximum_position(distance, components, lonely)
        for k, pos in enumerate(deepest):
            markers[pos] = len(peaks) + 1 + k
    labels = watershed(-distance, markers, mask=fg)
    return relabel_sequential(labels.astype(np.int32, copy=False))[0].astype(np.int32, copy=False)
