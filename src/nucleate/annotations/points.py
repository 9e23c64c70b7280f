"""Point coordinates, points tables and grouping points by image.

Convention (DESIGN.md, ``points`` table): ``x`` = column, ``y`` = row, float pixels, origin at the
top-left *corner* of the top-left pixel, so the centre of pixel ``[r, c]`` is ``(c + 0.5, r + 0.5)``.

* :func:`points_table` is the one way to build a ``points`` table from columns (Label Studio exports,
  QuPath / COCO / CSV imports, consensus, ground truth, predictions).
* :func:`rows_by_image` is the one way to group a points table's rows by image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from nucleate.io.tables import SCHEMAS, validate_table

__all__ = ["UNKNOWN_TIME", "centroids_xy", "group_rows", "points_table", "points_xy", "rows_by_image"]

#: ``created_at`` of points whose time is not known (ground truth, imports without one): the Unix epoch.
UNKNOWN_TIME = datetime.fromtimestamp(0, UTC)

#: optional columns of :func:`points_table` and their value when not given
_OPTIONAL: dict[str, Any] = {"task_id": None, "annotation_id": None, "created_at": UNKNOWN_TIME}


def centroids_xy(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroids of the instances of a ``(H, W)`` label image, in one pass.

    Returns ``(ids, xy)``: ``ids`` (K,) int64 of the labels present (0 = background excluded),
    ``xy`` (K, 2) float64 pixel coordinates in the corner-origin convention above.
    """
    flat = labels.ravel()
    n = int(flat.max(initial=0)) + 1
    counts = np.bincount(flat, minlength=n)
    rows, cols = np.divmod(np.arange(flat.size), labels.shape[1])
    sum_r = np.bincount(flat, weights=rows, minlength=n)
    sum_c = np.bincount(flat, weights=cols, minlength=n)
    ids = np.flatnonzero(counts)
    ids = ids[ids != 0]
    xy = np.stack([sum_c[ids] / counts[ids] + 0.5, sum_r[ids] / counts[ids] + 0.5], axis=1)
    return ids.astype(np.int64), xy


def points_table(columns: Mapping[str, Any], *, source: str = "points") -> pa.Table:
    """A validated ``points`` table (:data:`nucleate.io.SCHEMAS` ``["points"]``) from columns.

    ``columns`` maps column name -> one value per point (list, numpy array or pyarrow array) or a single
    value for every point (``"annotator": "consensus"``). Required: ``image_id``, ``x``, ``y`` (float
    pixels, corner origin), ``label``, ``annotator``, ``round``, ``origin``; ``task_id`` and
    ``annotation_id`` default to null and ``created_at`` to :data:`UNKNOWN_TIME`. Columns outside the
    schema (e.g. ``score``) are kept after the schema's. The number of points is the length of the
    first per-point column (0 when every value is a single value). Raises
    :class:`nucleate.io.TableError` naming ``source``, the column and the first bad row.
    """
    schema = SCHEMAS["points"]
    given = {**_OPTIONAL, **columns}
    per_point = [v for v in given.values() if _is_column(v)]
    n = len(per_point[0]) if per_point else 0
    arrays, fields = [], []
    for name, value in given.items():
        ftype = schema.field(name).type if name in schema.names else None
        if _is_column(value):
            if len(value) != n:
                raise ValueError(f"{source}: column '{name}' has {len(value)} values, expected {n} (one per point)")
            arr = value if isinstance(value, pa.Array | pa.ChunkedArray) else pa.array(value, type=ftype)
        else:
            arr = pa.nulls(n, ftype) if value is None and ftype is not None else pa.array([value] * n, type=ftype)
        if ftype is not None and arr.type != ftype:
            arr = arr.cast(ftype)
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    table = pa.table(arrays, schema=pa.schema(fields))
    order = [c for c in schema.names if c in table.column_names] + [c for c in table.column_names
                                                                   if c not in schema.names]
    return validate_table("points", table.select(order), source=source)


def _is_column(value: Any) -> bool:
    return isinstance(value, np.ndarray | pa.Array | pa.ChunkedArray) or (
        isinstance(value, Sequence) and not isinstance(value, str | bytes))


def points_xy(points: pa.Table) -> np.ndarray:
    """The ``x``, ``y`` columns of a points table as a ``(N, 2)`` float64 array of (x, y) pixels."""
    if not points.num_rows:
        return np.zeros((0, 2))
    return np.stack([points.column("x").to_numpy(), points.column("y").to_numpy()], axis=1).astype(np.float64)


def group_rows(keys: Sequence[Any] | np.ndarray | pa.Array | pa.ChunkedArray) -> dict[Any, np.ndarray]:
    """key -> int64 row indices (ascending) of the rows holding that key; keys in sorted order.

    One pass (stable sort + split), so a table of millions of rows groups in well under a second.
    """
    if isinstance(keys, pa.Array | pa.ChunkedArray):
        keys = keys.to_numpy(zero_copy_only=False)
    values = np.asarray(keys, dtype=object) if not isinstance(keys, np.ndarray) else keys
    if not len(values):
        return {}
    order = np.argsort(values, kind="stable")
    uniq, starts = np.unique(values[order], return_index=True)
    return dict(zip(uniq.tolist(), np.split(order.astype(np.int64), starts[1:]), strict=True))


def rows_by_image(points: pa.Table) -> dict[str, np.ndarray]:
    """image_id -> int64 row indices (ascending) of ``points`` on that image; image ids in sorted order.

    Works on any table with an ``image_id`` column (points, predictions). ``points_xy(points)[rows]`` are
    the image's (x, y) pixels.
    """
    return group_rows(points.column("image_id"))
