"""Points between tile px and slide level-0 px (float64; x = column, y = row, origin at a pixel corner)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from nucleate.io.tables import SLIDE_POINT_FIELDS, TILE_FIELDS
from nucleate.slides.grid import Tile

__all__ = ["slide_points", "slide_to_tile", "tile_to_slide"]


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


def slide_points(points: pa.Table, manifest: pa.Table) -> pa.Table:
    """``points`` (a ``points`` / ``predicted_points`` table; ``x, y`` in tile px) with the columns of
    :data:`nucleate.io.SLIDE_POINT_FIELDS` set from ``manifest``: for a point on a tile, its slide's ``slide_id``
    and the point in level-0 px (:func:`tile_to_slide` of :meth:`Tile.from_manifest` of the tile's row); null for
    points of plain images (or of images the manifest lacks).

    A manifest with no tile row returns ``points`` unchanged (no columns added). Columns of that name already in
    ``points`` are replaced. Other columns and the metadata are kept; rows keep their order.
    """
    if "slide_id" not in manifest.column_names or manifest.column("slide_id").null_count == manifest.num_rows:
        return points
    ids = points.column("image_id").to_numpy(zero_copy_only=False)
    uniq, inverse = np.unique(ids, return_inverse=True)
    wanted = set(uniq.tolist())
    tiles = manifest.filter(pc.is_valid(manifest.column("slide_id"))).select(["image_id", "width", *TILE_FIELDS.names])
    rows = {r["image_id"]: r for r in tiles.to_pylist() if r["image_id"] in wanted}
    xy = np.column_stack([points.column("x").to_numpy(), points.column("y").to_numpy()]).astype(np.float64)
    out = np.full((len(ids), 2), np.nan)
    slide_id = np.full(len(ids), None, dtype=object)
    tile = np.zeros(len(ids), bool)
    order = np.argsort(inverse, kind="stable")  # the points of image k: order[bounds[k]:bounds[k + 1]]
    bounds = np.searchsorted(inverse[order], np.arange(len(uniq) + 1))
    for k, image_id in enumerate(uniq.tolist()):
        row = rows.get(image_id)
        if row is not None:
            at = order[bounds[k]:bounds[k + 1]]
            out[at] = tile_to_slide(Tile.from_manifest(row), xy[at])
            slide_id[at] = row["slide_id"]
            tile[at] = True
    table = points.drop_columns([n for n in SLIDE_POINT_FIELDS.names if n in points.column_names])
    values = {"slide_id": pa.array(slide_id.tolist(), pa.string()),
              "slide_x": pa.array(out[:, 0], pa.float64(), mask=~tile),
              "slide_y": pa.array(out[:, 1], pa.float64(), mask=~tile)}
    for f in SLIDE_POINT_FIELDS:
        table = table.append_column(f, values[f.name])
    return table
