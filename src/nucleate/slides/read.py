"""Lazy tile reads: one region from the tile's pyramid level, resampled to the target resolution."""

from __future__ import annotations

import math

import numpy as np

from nucleate.slides.grid import Tile
from nucleate.slides.reader import Slide

__all__ = ["read_tile", "read_window"]


def read_tile(slide: Slide, tile: Tile) -> np.ndarray:
    """The tile's pixels, uint8 RGB ``(tile_px, tile_px, 3)``.

    Reads the region under the tile from ``tile.level`` (white beyond the slide) and resamples it so that
    tile pixel ``(row, col)`` has its centre at level-0 ``(x0 + (col + 0.5) * sx, y0 + (row + 0.5) * sy)``:
    bilinear, after a Gaussian anti-aliasing blur when shrinking. Where the level's pixels line up with the
    tile's (same size, integer offset) the values are copied exactly.
    """
    return read_window(slide, tile, 0)


def read_window(slide: Slide, tile: Tile, margin_px: int) -> np.ndarray:
    """The tile and ``margin_px`` tile px around it on every side: uint8 RGB ``(n, n, 3)``, ``n = tile_px + 2 *
    margin_px``, on the tile's own pixel grid (window pixel ``(row, col)`` = tile pixel ``(row - margin_px, col -
    margin_px)``, so ``window[m:m + tile_px, m:m + tile_px]`` is :func:`read_tile`'s up to the blur at its edge).
    Read and resampled like :func:`read_tile` (white beyond the slide)."""
    from scipy.ndimage import gaussian_filter
    from skimage.transform import AffineTransform, warp

    lsx, lsy = slide.level_scale(tile.level)
    sx, sy = tile.scale
    n = tile.tile_px + 2 * margin_px
    # the window's corner box in level-0 px (the tile's when margin_px = 0, bit for bit)
    bx0, by0 = tile.x0 - margin_px * sx, tile.y0 - margin_px * sy
    bx1, by1 = tile.x0 + tile.width0 + margin_px * sx, tile.y0 + tile.height0 + margin_px * sy
    # the window's corner box in level px, and the integer window read around it
    ax, ay = bx0 / lsx, by0 / lsy
    rx, ry = math.floor(ax), math.floor(ay)
    rw = math.ceil(bx1 / lsx) - rx + 1
    rh = math.ceil(by1 / lsy) - ry + 1
    window = slide.read_level(tile.level, rx, ry, rw, rh).astype(np.float32)
    fx, fy = sx / lsx, sy / lsy  # window px per tile px
    if fx > 1.0 or fy > 1.0:
        sigma = (max(0.0, (fy - 1) / 2), max(0.0, (fx - 1) / 2), 0.0)
        window = gaussian_filter(window, sigma, mode="nearest")
    if np.isclose(fx, 1.0) and np.isclose(fy, 1.0) and float(ax - rx).is_integer() and float(ay - ry).is_integer():
        out = window[:n, :n]
    else:
        # output index (col, row) -> window index: ((col + 0.5) * f + a - r) - 0.5 (pixel centres)
        inverse = AffineTransform(
            matrix=np.array([[fx, 0.0, 0.5 * fx + ax - rx - 0.5], [0.0, fy, 0.5 * fy + ay - ry - 0.5], [0.0, 0.0, 1.0]])
        )
        out = warp(window, inverse, output_shape=(n, n), order=1, mode="edge", preserve_range=True)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
