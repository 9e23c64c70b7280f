"""Tissue mask of a whole slide, computed once from a low-resolution thumbnail (never per tile)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nucleate.config import SlidesParams
from nucleate.slides.reader import Slide

__all__ = ["TissueMask", "thumbnail", "tissue_mask", "tissue_from_rgb"]


@dataclass(frozen=True)
class TissueMask:
    """Boolean tissue mask ``(h, w)`` of a whole slide.

    ``scale`` = ``(sx, sy)``: level-0 px per mask px along x and y; mask pixel ``(row, col)`` covers level-0
    ``[col * sx, (col + 1) * sx) x [row * sy, (row + 1) * sy)``. ``mpp`` = µm per mask px ``(x, y)``.
    """

    mask: np.ndarray
    scale: tuple[float, float]
    mpp: tuple[float, float]

    @property
    def fraction(self) -> float:
        """Share of the slide's area that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0


def thumbnail(slide: Slide, thumbnail_mpp: float) -> tuple[np.ndarray, tuple[float, float]]:
    """The slide at about ``thumbnail_mpp`` µm/px (never finer than the coarsest level that is not coarser).

    Reads the coarsest level whose resolution is at most ``thumbnail_mpp`` whole, then shrinks it by the integer
    factor that comes closest to ``thumbnail_mpp`` (block mean; a partial last block is averaged over what it has).
    Returns uint8 RGB ``(h, w, 3)`` and its scale ``(sx, sy)`` in level-0 px per thumbnail px.
    """
    want = thumbnail_mpp / min(slide.mpp)  # level-0 px per thumbnail px wanted
    level = max((k for k, d in enumerate(slide.level_downsamples) if d <= want * 1.001), default=0)
    w, h = slide.level_dimensions[level]
    factor = max(1, int(round(want / slide.level_downsamples[level])))
    # read in strips of whole blocks so that memory stays bounded on a slide without a coarse level
    rows = factor * max(1, _STRIP_PX // max(w, 1) // factor)
    strips = [_shrink(slide.read_level(level, 0, y, w, min(rows, h - y)), factor) for y in range(0, h, rows)]
    image = np.concatenate(strips, axis=0)
    sx, sy = slide.level_scale(level)
    return image, (sx * factor, sy * factor)


_STRIP_PX = 1 << 24  # level px per strip read for the thumbnail (48 MiB of RGB)


def _shrink(image: np.ndarray, factor: int) -> np.ndarray:
    """Block mean by ``factor`` (a partial last block averages what it has); uint8 RGB in and out.

    Exact integer block sums (uint32), one rounding at the end; no float copy of the whole image.
    """
    if factor == 1:
        return image
    h, w, c = image.shape
    bh, bw = -(-h // factor), -(-w // factor)
    if (h, w) != (bh * factor, bw * factor):
        image = np.pad(image, ((0, bh * factor - h), (0, bw * factor - w), (0, 0)))
    # rows of each block first (contiguous, fast), then the columns of the factor-times smaller result
    sums = image.reshape(bh, factor, bw * factor * c).sum(axis=1, dtype=np.uint32)
    sums = sums.reshape(bh, bw, factor, c).sum(axis=2)
    rows = np.minimum(factor, h - np.arange(bh) * factor)  # real pixels per block row / column
    cols = np.minimum(factor, w - np.arange(bw) * factor)
    counts = (rows[:, None] * cols[None, :])[..., None]
    return ((2 * sums + counts) // (2 * counts)).astype(np.uint8)  # round half up


def tissue_from_rgb(image: np.ndarray, params: SlidesParams, mpp: tuple[float, float]) -> np.ndarray:
    """Tissue mask of an RGB thumbnail ``(h, w, 3)`` uint8 at ``mpp`` µm/px ``(x, y)``: bool ``(h, w)``.

    Tissue = the ``params.tissue_channel`` above its Otsu threshold and above a floor (:func:`tissue_signal`),
    then a binary closing with a disk of ``closing_um``, removal of objects smaller than ``min_object_um2`` and
    filling of holes smaller than ``min_hole_um2``.
    """
    from scipy import ndimage
    from skimage.morphology import disk

    mask = tissue_signal(image, params)
    px_area = mpp[0] * mpp[1]
    radius = int(round(params.closing_um / np.sqrt(px_area)))
    if radius > 0:
        # pad with background so the closing is extensive at the slide's edges too
        padded = np.pad(mask, radius, constant_values=False)
        mask = ndimage.binary_closing(padded, disk(radius))[radius:-radius, radius:-radius]
    mask = _drop_small(mask, params.min_object_um2 / px_area)
    return ~_drop_small(~mask, params.min_hole_um2 / px_area)


_OD = (-np.log10((np.arange(256) + 1.0) / 256.0)).astype(np.float32)  # optical density of each uint8 value


def optical_density(image: np.ndarray) -> np.ndarray:
    """Mean optical density over the RGB channels of uint8 ``(h, w, 3)``: ``-log10((I + 1) / 256)``, float32
    ``(h, w)``; 0 for white, about 0.02 for bright glass, 0.1-1 for stained tissue."""
    od = _OD[image[..., 0]]
    od += _OD[image[..., 1]]
    od += _OD[image[..., 2]]
    return od / 3.0


def saturation(image: np.ndarray) -> np.ndarray:
    """HSV saturation ``(max - min) / max`` over the channels of uint8 RGB ``(h, w, 3)``: float32 ``(h, w)``, 0 where
    the pixel is black or gray (as :func:`skimage.color.rgb2hsv`, without its float64 copies of the image)."""
    top = image.max(axis=-1)
    spread = (top - image.min(axis=-1)).astype(np.float32)
    return np.divide(spread, top, out=np.zeros_like(spread), where=top > 0)


def tissue_signal(image: np.ndarray, params: SlidesParams) -> np.ndarray:
    """Pixels of an RGB thumbnail ``(h, w, 3)`` that pass the tissue threshold: bool ``(h, w)``, before cleaning.

    ``saturation``: HSV saturation above Otsu's threshold and above ``min_saturation``. ``optical_density``:
    :func:`optical_density` above ``min_optical_density`` and above Otsu's threshold computed on its logarithm
    (background pixels pile up near 0 and stained tissue has a long tail, which pulls a linear Otsu into the
    tissue; on the log scale the two modes are about equally wide). Optical density also finds unstained or gray
    (single-channel) tissue, which has no saturation.
    """
    from skimage.filters import threshold_otsu

    log_scale = params.tissue_channel == "optical_density"
    if log_scale:
        signal, floor = optical_density(image), params.min_optical_density
        otsu_on = np.log(np.maximum(signal, 1e-3))
    else:
        signal, floor = saturation(image), params.min_saturation
        otsu_on = signal
    level = floor
    if otsu_on.size and otsu_on.max() > otsu_on.min():
        otsu = float(threshold_otsu(otsu_on))
        level = max(level, float(np.exp(otsu)) if log_scale else otsu)
    return signal > level


def _drop_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    """``mask`` without its 4-connected components of fewer than ``min_px`` pixels."""
    from scipy import ndimage

    if min_px <= 1:
        return mask
    labels, _ = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def tissue_mask(slide: Slide, params: SlidesParams) -> TissueMask:
    """The slide's tissue mask at about ``params.thumbnail_mpp`` µm/px (one low-resolution read)."""
    image, scale = thumbnail(slide, params.thumbnail_mpp)
    mpp = (scale[0] * slide.mpp[0], scale[1] * slide.mpp[1])
    return TissueMask(tissue_from_rgb(image, params, mpp), scale, mpp)
