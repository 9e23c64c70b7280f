"""Points between tile px and slide level-0 px (float64; x = column, y = row, origin at a pixel corner)."""

from __future__ import annotations

import numpy as np

from nucleate.slides.grid import Tile

__all__ = ["slide_to_tile", "tile_to_slide"]


def tile_to_slide(tile: Tile, xy: np.ndarray) -> np.ndarray:
    """Tile-px points ``(n, 2)`` (x, y) -> level-0 px ``(n, 2)`` float64: ``x0 + x * width0 / tile_px``."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    sx, sy = tile.scale
    return np.column_stack([tile.x0 + xy[:, 0] * sx, tile.y0 + xy[:, 1] * sy])


def slide_to_tile(tile: Tile, xy: np.ndarray) -> np.ndarray:
    """Level-0 px points ``(n, 2)`` (x, y) -> tile px ``(n, 2)`` float64 (the inverse of :func:`tile_to_slide`)."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    sx, sy = tile.scale
    return np.column_stack([(xy[:, 0] - tile.x0) / sx, (xy[:, 1] - tile.y0) / sy])
