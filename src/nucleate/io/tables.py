"""Parquet tables exchanged between stages: explicit pyarrow schemas, validated reads, atomic writes.

Kinds (see DESIGN.md, "Data contracts"):

* ``manifest`` — one row per pool image. ``path`` is relative to the folder that was ingested
  (stored in the schema metadata as ``root``); ``width``/``height`` in pixels. A pool item may be a *tile* of a
  whole-slide image: then ``path`` is the slide file, ``width = height`` = the tile's side at its resolution,
  and the optional columns :data:`TILE_FIELDS` say where it lies (null on rows of plain images; a manifest
  without slides may lack them). Read a pool item's pixels with :func:`nucleate.slides.read_pool_image`.
  Points on tiles may carry :data:`SLIDE_POINT_FIELDS` (the same point in slide level-0 px).
* ``teacher_probs`` — one row per image; ``probs`` has one float32 per class, every row a probability
  row (:func:`find_bad_prob_row`: finite, >= 0, summing to 1 ± :data:`PROB_SUM_TOLERANCE`).
  Schema metadata: ``classes`` (JSON list) and ``teacher_id``.
* ``student_probs`` — the same schema and rules, from the trained student (metadata ``classes``, ``model_id``).
* ``student_features`` — one row per image (``image_id`` unique); ``features`` is the student's pooled
  embedding, float32, finite, the same length on every row (used by the ``coreset`` / ``badge`` strategies).
* ``inflight`` — images pushed to annotators and not finished: ``image_id``, ``round`` (the round that
  pushed it), ``task_id`` (the Label Studio task, null when unknown).
* ``selection`` — the images picked in a round, ``rank`` 0 first.
* ``points`` — one clicked (or ground-truth) nucleus centre per row. ``x`` = column, ``y`` = row,
  float64 pixels, origin at the top-left corner of the top-left pixel (its centre is (0.5, 0.5)).
* ``predicted_points`` — the ``points`` columns and rules plus ``score`` (float32 in [0, 1], the model's
  confidence: mean nucleus probability of the instance): the student's nucleus centres (stage ``predict``),
  origin ``prediction``; a plain ``points`` reader accepts it (extra columns are kept).
* ``pseudomask_index`` — one row per image with a pseudo-mask, paths relative to the index file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nucleate.io.atomic import atomic_path

__all__ = [
    "SCHEMAS",
    "SPLITS",
    "ORIGINS",
    "TILE_FIELDS",
    "SLIDE_POINT_FIELDS",
    "TableError",
    "read_table",
    "write_table",
    "validate_table",
    "empty_table",
    "table_metadata",
    "probs_table",
    "probs_array",
    "features_array",
    "POINT_KINDS",
    "PROB_SUM_TOLERANCE",
    "BadProbRow",
    "find_bad_prob_row",
]

SPLITS = ("pool", "gold", "test")
#: ``manual`` = clicked by a person; ``prediction`` = a pre-annotation the person accepted;
#: ``ground_truth`` = centroid of a full ground-truth mask (sample data, simulated annotator).
ORIGINS = ("manual", "prediction", "ground_truth")

SCHEMAS: dict[str, pa.Schema] = {
    "manifest": pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("path", pa.string(), nullable=False),
            pa.field("width", pa.int32(), nullable=False),
            pa.field("height", pa.int32(), nullable=False),
            pa.field("channels", pa.int8(), nullable=False),
            pa.field("dtype", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("bytes", pa.int64(), nullable=False),
        ]
    ),
    "teacher_probs": pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("probs", pa.list_(pa.float32()), nullable=False),
        ]
    ),
    "student_features": pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("features", pa.list_(pa.float32()), nullable=False),
        ]
    ),
    "inflight": pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("round", pa.int32(), nullable=False),
            pa.field("task_id", pa.int64(), nullable=True),
        ]
    ),
    "selection": pa.schema(
        [
            pa.field("round", pa.int32(), nullable=False),
            pa.field("rank", pa.int32(), nullable=False),
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("strategy", pa.string(), nullable=False),
            pa.field("min_distance", pa.float64(), nullable=True),
        ]
    ),
    "points": pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("x", pa.float64(), nullable=False),
            pa.field("y", pa.float64(), nullable=False),
            pa.field("label", pa.string(), nullable=False),
            pa.field("annotator", pa.string(), nullable=False),
            pa.field("task_id", pa.int64(), nullable=True),
            pa.field("annotation_id", pa.int64(), nullable=True),
            pa.field("round", pa.int32(), nullable=False),
            pa.field("origin", pa.string(), nullable=False),
            pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        ]
    ),
    "pseudomask_index": pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("semantic_path", pa.string(), nullable=False),
            pa.field("instances_path", pa.string(), nullable=False),
            pa.field("voronoi_path", pa.string(), nullable=False),  # Qu et al.'s Voronoi label (uint8 PNG)
            pa.field("cluster_path", pa.string(), nullable=True),  # their cluster label; null for method voronoi
            pa.field("method", pa.string(), nullable=False),
            pa.field("n_points", pa.int32(), nullable=False),
            pa.field("n_instances", pa.int32(), nullable=False),
        ]
    ),
}

#: Optional manifest columns of whole-slide tiles (:class:`nucleate.slides.Tile`): ``slide_id`` = the slide
#: file's content id; ``tile_x0, tile_y0`` = top-left corner in level-0 px; ``tile_width0, tile_height0`` =
#: extent in level-0 px; ``tile_level`` = pyramid level read; ``tile_mpp`` = the tile's µm/px;
#: ``tissue_fraction`` = share of tissue on the slide's mask. All null on rows of plain images.
TILE_FIELDS = pa.schema(
    [
        pa.field("slide_id", pa.string()),
        pa.field("tile_x0", pa.int64()),
        pa.field("tile_y0", pa.int64()),
        pa.field("tile_width0", pa.float64()),
        pa.field("tile_height0", pa.float64()),
        pa.field("tile_level", pa.int32()),
        pa.field("tile_mpp", pa.float64()),
        pa.field("tissue_fraction", pa.float32()),
    ]
)
#: Optional columns of points on whole-slide tiles: ``slide_id`` (the slide's content id) and the point in the
#: slide's level-0 px, ``slide_x, slide_y`` (``x, y`` stay in tile px). Null on points of plain images.
SLIDE_POINT_FIELDS = pa.schema(
    [pa.field("slide_id", pa.string()), pa.field("slide_x", pa.float64()), pa.field("slide_y", pa.float64())]
)
#: optional columns per kind: cast to these types when present (all or none), absent is fine
_OPTIONAL: dict[str, pa.Schema] = {"manifest": TILE_FIELDS, "points": SLIDE_POINT_FIELDS,
                                   "predicted_points": SLIDE_POINT_FIELDS}

SCHEMAS["predicted_points"] = SCHEMAS["points"].append(pa.field("score", pa.float32(), nullable=False))
#: kinds holding points (x, y finite; origin one of ORIGINS)
POINT_KINDS = ("points", "predicted_points")

_ENUMS: dict[str, dict[str, tuple[str, ...]]] = {
    "manifest": {"split": SPLITS},
    "points": {"origin": ORIGINS},
    "predicted_points": {"origin": ORIGINS},
}
_UNIQUE: dict[str, tuple[str, ...]] = {
    "manifest": ("image_id",),
    "teacher_probs": ("image_id",),
    "student_probs": ("image_id",),
    "student_features": ("image_id",),
    "pseudomask_index": ("image_id",),
}
#: kinds holding one probability row per image (same schema, same checks)
PROB_KINDS = ("teacher_probs", "student_probs")
SCHEMAS["student_probs"] = SCHEMAS["teacher_probs"]

#: A probability row may sum to 1 ± this (float64 sum of its values as given). The one tolerance of the
#: project: tables, :func:`nucleate.selection.select` and the ``file`` teacher all use :func:`find_bad_prob_row`.
PROB_SUM_TOLERANCE = 1e-3
_PROB_CHUNK_ROWS = 65_536


class TableError(ValueError):
    """A table file does not match its schema; the message names the file, column and row."""


def _kind_schema(kind: str) -> pa.Schema:
    try:
        return SCHEMAS[kind]
    except KeyError:
        raise ValueError(f"unknown table kind {kind!r}; known: {', '.join(SCHEMAS)}") from None


def empty_table(kind: str) -> pa.Table:
    """A zero-row table of ``kind``."""
    return _kind_schema(kind).empty_table()


def table_metadata(table: pa.Table) -> dict[str, Any]:
    """The nucleate metadata stored with a table (``classes``, ``teacher_id``, ``root``...), JSON-decoded."""
    raw = table.schema.metadata or {}
    out = {}
    for key, value in raw.items():
        key_s = key.decode()
        if key_s.startswith("nucleate."):
            out[key_s.removeprefix("nucleate.")] = json.loads(value)
    return out


def validate_table(kind: str, table: pa.Table, source: str = "<table>") -> pa.Table:
    """Conform ``table`` to the ``kind`` schema (safe casts only) and check its values.

    Returns the table with columns in schema order (extra columns kept after them) and the
    original metadata. Raises :class:`TableError` naming ``source``, the column and the first bad row.
    """
    schema = _kind_schema(kind)
    wanted = list(schema)
    optional = _OPTIONAL.get(kind)
    if optional is not None and any(name in table.column_names for name in optional.names):
        missing = [name for name in optional.names if name not in table.column_names]
        if missing:
            raise TableError(f"{source}: {kind} table has some of the optional columns {', '.join(optional.names)} "
                             f"but not {', '.join(missing)}; give all of them or none")
        wanted += list(optional)  # cast and placed like the schema's own (all nullable)
    columns, fields = [], []
    for f in wanted:
        if f.name not in table.column_names:
            raise TableError(
                f"{source}: {kind} table is missing column '{f.name}' ({f.type}); "
                f"columns present: {', '.join(table.column_names) or 'none'}"
            )
        col = table.column(f.name)
        if col.type != f.type:
            try:
                col = col.cast(f.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise TableError(
                    f"{source}: column '{f.name}' has type {col.type}, expected {f.type}"
                ) from None
        if not f.nullable and col.null_count:
            row = int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0])
            raise TableError(f"{source}: column '{f.name}' is empty (null) at row {row}; it is required")
        columns.append(col)
        fields.append(f)
    taken = {f.name for f in fields}
    for name in table.column_names:
        if name not in taken:
            columns.append(table.column(name))
            fields.append(table.schema.field(name))
    out = pa.table(columns, schema=pa.schema(fields, metadata=table.schema.metadata))
    _check_values(kind, out, source)
    return out


def _check_values(kind: str, table: pa.Table, source: str) -> None:
    for name, allowed in _ENUMS.get(kind, {}).items():
        bad = pc.invert(pc.is_in(table.column(name), value_set=pa.array(allowed)))
        idx = np.flatnonzero(bad.to_numpy(zero_copy_only=False))
        if idx.size:
            row = int(idx[0])
            raise TableError(
                f"{source}: column '{name}' row {row} is {table.column(name)[row].as_py()!r}; "
                f"allowed: {', '.join(allowed)}"
            )
    for name in _UNIQUE.get(kind, ()):
        column = table.column(name)
        if len(pc.unique(column)) == len(column):  # a hash pass: 10⁶ ids in ~0.3 s (sorting objects took ~10 s)
            continue
        values = column.to_numpy(zero_copy_only=False)
        uniq, first, counts = np.unique(values, return_index=True, return_counts=True)
        if (counts > 1).any():
            dup = uniq[counts > 1][0]
            rows = np.flatnonzero(values == dup)[:2].tolist()
            raise TableError(f"{source}: column '{name}' repeats {dup!r} (rows {rows[0]} and {rows[1]})")
    if kind in POINT_KINDS:
        for axis in ("x", "y"):
            values = table.column(axis).to_numpy(zero_copy_only=False)
            bad = ~np.isfinite(values)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise TableError(f"{source}: column '{axis}' row {row} is {values[row]}; must be finite")
    if kind == "predicted_points":
        values = table.column("score").to_numpy(zero_copy_only=False)
        bad = ~((values >= 0.0) & (values <= 1.0))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise TableError(f"{source}: column 'score' row {row} is {values[row]}; must be in [0, 1]")
    if kind in PROB_KINDS:
        _check_probs(table, source)
    if kind == "student_features":
        _check_features(table, source)


@dataclass(frozen=True)
class BadProbRow:
    """The first row of a probability matrix that breaks the rule of :func:`find_bad_prob_row`.

    ``problem`` is ``non-finite`` or ``negative`` (``column`` = the first such class, ``value`` its value) or
    ``sum`` (``column`` None, ``value`` = the row's float64 sum).
    """

    row: int
    problem: str
    column: int | None
    value: float

    def describe(self, classes: Sequence[str] | None = None) -> str:
        """What is wrong, e.g. ``class 1 (micronucleus) is nan; probabilities must be finite``."""
        if self.problem == "sum":
            return (f"sums to {self.value:.6f}; each row must sum to 1 (±{PROB_SUM_TOLERANCE}): "
                    "pass probabilities (softmax outputs), not logits or scores")
        name = f" ({classes[self.column]})" if classes is not None and self.column < len(classes) else ""
        rule = "finite" if self.problem == "non-finite" else ">= 0"
        return f"class {self.column}{name} is {self.value}; probabilities must be {rule}"


def find_bad_prob_row(probs: np.ndarray) -> BadProbRow | None:
    """The first row of ``probs`` (N, C) that is not a probability row, or None when all are.

    The rule (one for the whole project): every value finite and >= 0, and the row's sum, computed in
    float64 over the values as given, within :data:`PROB_SUM_TOLERANCE` of 1. Rows are checked in chunks of
    65,536, so a (1e6, 50) matrix never costs an (N, C) temporary. Callers add where the row came from.
    """
    array = np.asarray(probs)
    for start in range(0, array.shape[0], _PROB_CHUNK_ROWS):
        chunk = array[start:start + _PROB_CHUNK_ROWS]
        finite = np.isfinite(chunk)
        sums = chunk.sum(axis=1, dtype=np.float64)
        bad = ~finite.all(axis=1) | (chunk < 0).any(axis=1) | ~(np.abs(sums - 1.0) <= PROB_SUM_TOLERANCE)
        if not bad.any():
            continue
        local = int(np.flatnonzero(bad)[0])
        values = chunk[local]
        if not finite[local].all():
            col = int(np.flatnonzero(~finite[local])[0])
            return BadProbRow(start + local, "non-finite", col, float(values[col]))
        if (values < 0).any():
            col = int(np.flatnonzero(values < 0)[0])
            return BadProbRow(start + local, "negative", col, float(values[col]))
        return BadProbRow(start + local, "sum", None, float(sums[local]))
    return None


def _list_lengths(table: pa.Table, name: str) -> tuple[pa.ChunkedArray, np.ndarray]:
    column = table.column(name)
    return column, pc.list_value_length(column).to_numpy(zero_copy_only=False)


def _check_probs(table: pa.Table, source: str) -> None:
    probs, lengths = _list_lengths(table, "probs")
    meta = table_metadata(table)
    classes = meta.get("classes")
    n_classes = len(classes) if classes is not None else (int(lengths[0]) if len(lengths) else 0)
    if (lengths != n_classes).any():
        row = int(np.flatnonzero(lengths != n_classes)[0])
        raise TableError(f"{source}: probs row {row} has {lengths[row]} values, expected {n_classes} (classes)")
    if not len(lengths):
        return
    flat = pc.list_flatten(probs).to_numpy(zero_copy_only=False).reshape(len(lengths), n_classes)
    bad = find_bad_prob_row(flat)
    if bad is not None:
        image_id = table.column("image_id")[bad.row].as_py()
        raise TableError(f"{source}: probs row {bad.row} (image_id {image_id}): {bad.describe(classes)}")


def _check_features(table: pa.Table, source: str) -> None:
    features, lengths = _list_lengths(table, "features")
    if not len(lengths):
        return
    bad_len = (lengths == 0) | (lengths != lengths[0])
    if bad_len.any():
        row = int(np.flatnonzero(bad_len)[0])
        what = "has no values" if lengths[row] == 0 else f"has {lengths[row]} values, row 0 has {lengths[0]}"
        raise TableError(f"{source}: column 'features' row {row} (image_id {table.column('image_id')[row].as_py()}) "
                         f"{what}; every image needs a feature vector of the same, non-zero length")
    flat = pc.list_flatten(features).to_numpy(zero_copy_only=False).reshape(len(lengths), int(lengths[0]))
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        col = int(np.flatnonzero(~np.isfinite(flat[row]))[0])
        raise TableError(f"{source}: column 'features' row {row} (image_id {table.column('image_id')[row].as_py()}) "
                         f"value {col} is {flat[row, col]}; features must be finite")


def read_table(kind: str, path: str | Path) -> pa.Table:
    """Read a Parquet table of ``kind`` from ``path`` and validate it (see :func:`validate_table`)."""
    _kind_schema(kind)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {kind} table not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise TableError(f"{path}: not a readable Parquet file ({exc})") from None
    return validate_table(kind, table, source=str(path))


def write_table(
    kind: str,
    data: pa.Table | Mapping[str, Any],
    path: str | Path,
    metadata: Mapping[str, Any] | None = None,
) -> pa.Table:
    """Validate ``data`` as a ``kind`` table and write it to ``path`` atomically (Parquet, zstd).

    ``data`` is a pyarrow Table or a mapping of column name -> sequence. ``metadata`` values are
    JSON-encoded under ``nucleate.<key>`` in the schema metadata and merged over the table's own.
    Returns the validated table as written.
    """
    path = Path(path)
    table = data if isinstance(data, pa.Table) else _from_mapping(kind, data)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({f"nucleate.{k}".encode(): json.dumps(v).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    table = validate_table(kind, table, source=str(path))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return table


def _from_mapping(kind: str, data: Mapping[str, Any]) -> pa.Table:
    schema = _kind_schema(kind)
    arrays = {}
    for name, values in data.items():
        field_type = schema.field(name).type if name in schema.names else None
        arrays[name] = pa.array(values, type=field_type)
    return pa.table(arrays)


def probs_table(image_ids: Any, probs: np.ndarray, *, classes: list[str], teacher_id: str) -> pa.Table:
    """Build a ``teacher_probs`` table from ``image_ids`` (N,) and ``probs`` (N, C) float32.

    ``classes`` (C names, column order of ``probs``) and ``teacher_id`` go into the schema metadata.
    """
    probs = np.ascontiguousarray(probs, dtype=np.float32)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"probs must have shape (N, {len(classes)}), got {probs.shape}")
    offsets = pa.array(np.arange(0, probs.size + 1, probs.shape[1], dtype=np.int32))
    column = pa.ListArray.from_arrays(offsets, pa.array(probs.reshape(-1)))
    meta = {b"nucleate.classes": json.dumps(list(classes)).encode(),
            b"nucleate.teacher_id": json.dumps(teacher_id).encode()}
    schema = SCHEMAS["teacher_probs"].with_metadata(meta)
    return pa.table([pa.array(image_ids, type=pa.string()), column], schema=schema)


def probs_array(table: pa.Table) -> np.ndarray:
    """The ``probs`` column of a validated ``teacher_probs`` / ``student_probs`` table as (N, C) float32."""
    return _list_matrix(table, "probs", len(table_metadata(table).get("classes", [])))


def features_array(table: pa.Table) -> np.ndarray:
    """The ``features`` column of a validated ``student_features`` table as (N, F) float32."""
    return _list_matrix(table, "features", 0)


def _list_matrix(table: pa.Table, name: str, empty_width: int) -> np.ndarray:
    column = table.column(name)
    n = len(column)
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(n, -1) if n else np.zeros((0, empty_width), np.float32)
