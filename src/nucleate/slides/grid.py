"""A grid of tiles at a target resolution over a slide, kept by their tissue fraction on the slide's mask."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from nucleate.config import SlidesParams
from nucleate.slides.reader import Slide
from nucleate.slides.tissue import TissueMask

__all__ = ["Tile", "best_level", "core_box", "tile_grid", "tissue_fractions"]


@dataclass(frozen=True)
class Tile:
    """One square tile of ``tile_px`` px at ``mpp`` µm/px.

    ``x0, y0``: its top-left corner in level-0 px (integers); ``width0, height0``: its extent in level-0 px
    (``tile_px * mpp / slide mpp``, float). ``level``: the pyramid level it is read from (then resampled to
    ``tile_px``). ``tissue_fraction``: share of tissue measured on the slide's thumbnail mask.

    In the manifest a tile is one pool row (:meth:`manifest_columns`, :meth:`from_manifest`): ``path`` is its
    slide file, ``width = height = tile_px``, and the ``tile_*`` columns of :data:`nucleate.io.TILE_FIELDS`.
    """

    slide_id: str
    x0: int
    y0: int
    width0: float
    height0: float
    tile_px: int
    mpp: float
    level: int
    tissue_fraction: float

    @property
    def scale(self) -> tuple[float, float]:
        """Level-0 px per tile px along ``(x, y)``."""
        return self.width0 / self.tile_px, self.height0 / self.tile_px

    def as_row(self) -> dict:
        """The tile as a plain dict (a table row)."""
        return asdict(self)

    @property
    def image_id(self) -> str:
        """The tile's pool id: 32 hex characters (BLAKE2b-128) of its slide's content id and its geometry, so the
        same tile of the same slide bytes gets the same id wherever the slide lives."""
        key = (f"{self.slide_id}/{self.x0}/{self.y0}/{self.width0!r}/{self.height0!r}/{self.tile_px}/{self.mpp!r}/"
               f"{self.level}")
        return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()

    def manifest_columns(self) -> dict:
        """The tile's ``tile_*`` / ``slide_id`` manifest values (:data:`nucleate.io.TILE_FIELDS`)."""
        return {"slide_id": self.slide_id, "tile_x0": self.x0, "tile_y0": self.y0, "tile_width0": self.width0,
                "tile_height0": self.height0, "tile_level": self.level, "tile_mpp": self.mpp,
                "tissue_fraction": self.tissue_fraction}

    @classmethod
    def from_manifest(cls, row: Mapping) -> Tile:
        """The tile of a manifest row (a dict with the :data:`nucleate.io.TILE_FIELDS` and ``width``)."""
        return cls(slide_id=row["slide_id"], x0=int(row["tile_x0"]), y0=int(row["tile_y0"]),
                   width0=float(row["tile_width0"]), height0=float(row["tile_height0"]), tile_px=int(row["width"]),
                   mpp=float(row["tile_mpp"]), level=int(row["tile_level"]),
                   tissue_fraction=float(row["tissue_fraction"]))


def best_level(slide: Slide, scale: float) -> int:
    """The coarsest level with at most ``scale`` level-0 px per level px (downsampled, never upsampled from it)."""
    return max((k for k, d in enumerate(slide.level_downsamples) if d <= scale * 1.001), default=0)


def tissue_fractions(tissue: TissueMask, boxes: np.ndarray) -> np.ndarray:
    """Exact tissue share of level-0 boxes ``(n, 4)`` = ``x0, y0, width, height`` on the mask: float64 ``(n,)``.

    The mask is piecewise constant, so its integral is bilinear inside each mask pixel: linear interpolation
    of the summed-area table at the box corners is exact, fractional pixel edges included. Box parts
    outside the slide count as background.
    """
    from scipy.ndimage import map_coordinates

    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    h, w = tissue.mask.shape
    sat = np.zeros((h + 1, w + 1), np.float64)  # summed-area table, built in place: one mask-sized float array
    sat[1:, 1:] = tissue.mask
    np.cumsum(sat, axis=0, out=sat)
    np.cumsum(sat, axis=1, out=sat)
    sx, sy = tissue.scale
    xa = np.clip(boxes[:, 0] / sx, 0, w)
    xb = np.clip((boxes[:, 0] + boxes[:, 2]) / sx, 0, w)
    ya = np.clip(boxes[:, 1] / sy, 0, h)
    yb = np.clip((boxes[:, 1] + boxes[:, 3]) / sy, 0, h)

    def at(y, x):
        return map_coordinates(sat, [y, x], order=1, mode="nearest")

    area = at(yb, xb) - at(ya, xb) - at(yb, xa) + at(ya, xa)
    full = boxes[:, 2] * boxes[:, 3] / (sx * sy)
    return np.clip(area / full, 0.0, 1.0)


def tile_grid(slide: Slide, tissue: TissueMask, params: SlidesParams) -> list[Tile]:
    """Tiles of ``params.tile_px`` px at ``params.target_mpp`` µm/px covering the slide, row by row.

    Tiles are laid exactly edge to edge from the level-0 origin, with no gap and no overlap: tile ``k`` of a row
    spans ``[round(k * w), round((k + 1) * w))`` level-0 px for the ideal extent ``w = tile_px * target_mpp /
    slide mpp``, so its corners are whole level-0 px and its extent ``width0`` differs from ``w`` by less than
    one level-0 px (its resolution from ``target_mpp`` by less than ``1 / w``). A level-0 point lies on exactly
    one tile of the grid. The last column / row may reach past the slide (that part reads as white background).
    Kept: tiles whose tissue fraction is >= ``tissue_threshold``.
    """
    ideal_w = params.tile_px * params.target_mpp / slide.mpp[0]
    ideal_h = params.tile_px * params.target_mpp / slide.mpp[1]
    w, h = slide.dimensions
    nx, ny = math.ceil(w / ideal_w - 1e-9), math.ceil(h / ideal_h - 1e-9)
    xs = np.round(np.arange(nx + 1) * ideal_w).astype(np.int64)  # column edges, level-0 px
    ys = np.round(np.arange(ny + 1) * ideal_h).astype(np.int64)
    gx, gy = np.meshgrid(xs[:-1], ys[:-1])
    gw, gh = np.meshgrid(np.diff(xs), np.diff(ys))
    boxes = np.stack([gx.ravel(), gy.ravel(), gw.ravel(), gh.ravel()], axis=1)
    fractions = tissue_fractions(tissue, boxes)
    level = best_level(slide, min(ideal_w, ideal_h) / params.tile_px)
    return [
        Tile(
            slide_id=slide.slide_id,
            x0=int(x),
            y0=int(y),
            width0=float(bw),
            height0=float(bh),
            tile_px=params.tile_px,
            mpp=params.target_mpp,
            level=level,
            tissue_fraction=float(f),
        )
        for (x, y, bw, bh), f in zip(boxes, fractions, strict=True)
        if f >= params.tissue_threshold
    ]


def core_box(tile: Tile) -> tuple[int, int, int, int]:
    """The level-0 box ``(x0, y0, x1, y1)`` (half-open: ``x0 <= x < x1``) a tile of :func:`tile_grid` *owns*.

    The grid's tiles are exactly edge to edge with whole-pixel corners, so this is the tile's own box, and the
    boxes of a grid partition the plane right of and below the origin: every level-0 point lies in exactly one.
    Whole-slide prediction keeps a nucleus only in the tile whose core box holds its centre.
    """
    return tile.x0, tile.y0, tile.x0 + round(tile.width0), tile.y0 + round(tile.height0)
