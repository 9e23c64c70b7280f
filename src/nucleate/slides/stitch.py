"""Whole-slide prediction, one tile at a time: which nuclei of an overlapping window a tile keeps.

Each tile of :func:`nucleate.slides.tile_grid` is segmented in a *window*: the tile plus ``margin_px`` tile px on
every side (:func:`nucleate.slides.read_window`; neighbouring windows share ``2 * margin_px`` px). A nucleus
seen by several windows is kept by exactly one tile: the one whose core box (:func:`nucleate.slides.core_box`,
the tile up to its neighbours' corners; the core boxes partition the plane) holds the nucleus's centre in
level-0 px. So a nucleus across a tile border is one instance, and none is lost, when its radius is at most
``margin_px`` (its owner's window then holds it whole, and the cut copy a neighbouring window sees has its
centre on the owner's side of the border). A nucleus whose centre lies in a tile that :func:`tile_grid` left out
(too little tissue) or outside the slide is dropped.

:func:`stitch_tile` is pure numpy on one window's instances: no slide, model or file.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from nucleate.slides.coords import tile_to_slide
from nucleate.slides.grid import Tile, core_box

__all__ = ["TileNuclei", "instance_outlines", "stitch_tile"]


class TileNuclei(NamedTuple):
    """The nuclei one tile owns, ``K`` of them, in the window's instance order."""

    # (tile_px, tile_px) int32: owned instances cut to the tile, k + 1 = row k, 0 elsewhere (an owned instance with
    # none of its pixels in the tile, only possible for a strongly non-convex one, is absent)
    labels: np.ndarray
    xy: np.ndarray  # (K, 2) float64 centres (x, y) in tile px (corner origin); inside the tile
    slide_xy: np.ndarray  # (K, 2) float64 the same centres in level-0 px
    scores: np.ndarray  # (K,) float32
    outlines: list[np.ndarray]  # K closed rings (n_k, 2) float64 (x, y) level-0 px of the whole nucleus


def stitch_tile(
    tile: Tile, margin_px: int, labels: np.ndarray, centres: np.ndarray, scores: np.ndarray, *, outlines: bool
) -> TileNuclei:
    """The nuclei ``tile`` owns among a window's instances.

    ``labels``: ``(n, n)`` int32 instances of the window (``n = tile_px + 2 * margin_px``, 0 background, 1..J);
    ``centres``: ``(J, 2)`` float64 (x, y) window px of instance j + 1 in row j; ``scores``: ``(J,)``. Kept: the
    instances whose centre, in level-0 px, lies in the tile's core box. ``outlines``: also trace each kept
    instance's outline (:func:`instance_outlines`) on the window, i.e. uncut.
    """
    n = tile.tile_px + 2 * margin_px
    labels = np.asarray(labels)
    if labels.shape != (n, n):
        raise ValueError(f"window labels must be ({n}, {n}) for tile_px {tile.tile_px} + 2 x margin {margin_px}, "
                         f"got {labels.shape}")
    centres = np.asarray(centres, np.float64).reshape(-1, 2)
    xy = centres - margin_px  # window px -> tile px
    slide_xy = tile_to_slide(tile, xy)
    x0, y0, x1, y1 = core_box(tile)
    own = ((slide_xy[:, 0] >= x0) & (slide_xy[:, 0] < x1) & (slide_xy[:, 1] >= y0) & (slide_xy[:, 1] < y1))
    ids = np.flatnonzero(own) + 1  # window instance ids kept, in order
    lookup = np.zeros(len(centres) + 1, np.int32)
    lookup[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
    cut = lookup[labels[margin_px:margin_px + tile.tile_px, margin_px:margin_px + tile.tile_px]]
    rings = []
    if outlines and ids.size:
        sx, sy = tile.scale
        origin = np.array([tile.x0 - margin_px * sx, tile.y0 - margin_px * sy])
        rings = [origin + ring * np.array([sx, sy]) for ring in instance_outlines(labels, ids)]
    return TileNuclei(cut, xy[own], slide_xy[own], np.asarray(scores, np.float32)[own], rings)


def instance_outlines(labels: np.ndarray, ids: np.ndarray) -> list[np.ndarray]:
    """Outline of each instance ``ids`` of ``labels`` ((H, W) int): a closed ring ``(n, 2)`` float64 (x, y) px,
    corner origin, first point = last, traced through the boundary pixels' centres (the 0.5 iso-line of the
    instance's mask, :func:`skimage.measure.find_contours`; the longest line when the instance has several parts),
    without the points inside straight runs (the same polygon, fewer vertices). A one-pixel instance is a square
    around its pixel."""
    from scipy import ndimage
    from skimage.measure import find_contours

    labels = np.asarray(labels)
    boxes = ndimage.find_objects(labels, max_label=int(max(ids, default=0)))
    rings = []
    for k in ids:
        box = boxes[int(k) - 1]
        if box is None:
            raise ValueError(f"instance {k} has no pixels")
        mask = np.pad(labels[box] == k, 1)
        lines = find_contours(mask.astype(np.float32), 0.5)
        line = _drop_collinear(max(lines, key=len))
        if len(line) < 4:  # a single pixel (or a degenerate line): its square
            r, c = np.argwhere(mask)[0]
            line = np.array([[r - 0.5, c - 0.5], [r - 0.5, c + 0.5], [r + 0.5, c + 0.5], [r + 0.5, c - 0.5],
                             [r - 0.5, c - 0.5]], np.float64)
        # padded (row, col) indices -> (x, y) corner-origin px of the labels image
        xy = np.column_stack([line[:, 1] - 1 + box[1].start + 0.5, line[:, 0] - 1 + box[0].start + 0.5])
        rings.append(xy)
    return rings


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """A closed ring ``(n, 2)`` (first = last) without the vertices where it goes straight on (exact)."""
    if len(ring) < 4:
        return ring
    points = ring[:-1]
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    turn = np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) > 1e-9
    kept = points[turn]
    return np.concatenate([kept, kept[:1]]) if len(kept) >= 3 else ring
