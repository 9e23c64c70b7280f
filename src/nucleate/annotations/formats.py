"""Points tables <-> QuPath GeoJSON, COCO keypoints and CSV (pure: dicts and text in, dicts and tables out).

Coordinate conventions (nucleate: ``x`` = column, ``y`` = row, float pixels, origin at the top-left
*corner* of the top-left pixel, so pixel ``[r, c]`` has its centre at ``(c + 0.5, r + 0.5)``):

* **QuPath GeoJSON** uses the same convention (pixel units, origin at the image's top-left corner): no
  offset. Export writes one ``Point`` feature per point (an annotation, ``classification.name`` =
  label) with nucleate's own columns under ``properties.nucleate``; import reads ``Point`` and
  ``MultiPoint`` features (other geometries are rejected one by one).
* **QuPath GeoJSON on a whole slide** (points on tiles, :func:`to_qupath_slides` / :func:`from_qupath_slides`):
  coordinates in the slide's full-resolution (level-0) px, one ``MultiPoint`` annotation per class as
  QuPath's Points tool writes it; per-point nucleate columns ride along as parallel lists under
  ``properties.nucleate_points``. Import maps each point to the kept tile that contains it (tile px).
* **COCO keypoints** are pixel *indices* (the centre of pixel ``[r, c]`` is ``(c, r)``, the reading of
  detectron2 and pycocotools), so ``x_coco = x - 0.5``. One COCO annotation per point, one keypoint
  ``"center"`` with visibility 2; nucleate's columns ride along under ``"nucleate"``.
* **CSV** (import): a header row; either ``x``,``y`` (nucleate convention) or ``row``,``col`` (pixel
  indices, converted to the pixel centre); ``image_id`` or ``image`` (a file name or relative path from
  the manifest); optional ``label``, ``annotator``.
"""

from __future__ import annotations

import csv
import io
import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from nucleate.annotations.labelstudio import PALETTE, point_problem
from nucleate.annotations.points import UNKNOWN_TIME, group_rows, points_table
from nucleate.io.tables import ORIGINS, SCHEMAS, SLIDE_POINT_FIELDS
from nucleate.slides.coords import slide_to_tile, tile_to_slide
from nucleate.slides.grid import Tile

__all__ = [
    "ImportResult",
    "to_qupath",
    "qupath_detection",
    "from_qupath",
    "to_qupath_slides",
    "from_qupath_slides",
    "to_coco",
    "from_coco",
    "from_csv",
    "COCO_OFFSET",
]

COCO_OFFSET = 0.5  # nucleate x - COCO x (pixel corners vs pixel indices)
_NS = uuid.UUID("6f0c1f2e-5b7a-4e8b-9a35-2c1d0b5e7a10")  # uuid5 namespace for stable feature ids


@dataclass
class ImportResult:
    """Imported points (validated ``points`` table) and one line per rejected point (or per group of points,
    e.g. all points of a slide file that lie on no kept tile); ``n_rejected`` counts points (default: one per
    line)."""

    points: pa.Table
    rejected: list[str]
    n_rejected: int = -1

    def __post_init__(self) -> None:
        if self.n_rejected < 0:
            self.n_rejected = len(self.rejected)


def _rgb(hex_colour: str) -> list[int]:
    return [int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]


def _meta(row: Mapping[str, Any]) -> dict[str, Any]:
    created = row["created_at"]
    return {
        "image_id": row["image_id"],
        "annotator": row["annotator"],
        "task_id": row["task_id"],
        "annotation_id": row["annotation_id"],
        "round": row["round"],
        "origin": row["origin"],
        "created_at": created.astimezone(UTC).isoformat() if created is not None else None,
    }


def _colours(labels: Sequence[str]) -> dict[str, list[int]]:
    """Label -> ``[r, g, b]`` (the Label Studio config's palette, in ``labels`` order)."""
    return {c: _rgb(PALETTE[i % len(PALETTE)]) for i, c in enumerate(labels)}


_GREY = [128, 128, 128]  # colour of labels outside params ``labels``


def to_qupath(points: pa.Table, labels: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """``points`` -> ``{image_id: GeoJSON FeatureCollection}`` (one ``Point`` feature per row).

    ``labels`` (params ``labels``) fixes label colours (same palette as the Label Studio config); other
    labels get grey. Feature ids are UUIDs derived from the row's content, so exports are reproducible.
    """
    colour = _colours(labels)
    out: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(points.select(SCHEMAS["points"].names).to_pylist()):
        meta = _meta(row)
        fid = uuid.uuid5(_NS, f"{row['image_id']}|{i}|{row['x']!r}|{row['y']!r}|{row['annotator']}")
        feature = {
            "type": "Feature",
            "id": str(fid),
            "geometry": {"type": "Point", "coordinates": [row["x"], row["y"]]},
            "properties": {
                "objectType": "annotation",
                "classification": {"name": row["label"], "color": colour.get(row["label"], _GREY)},
                "isLocked": False,
                "nucleate": meta,
            },
        }
        out.setdefault(row["image_id"], {"type": "FeatureCollection", "features": []})["features"].append(feature)
    return out


def _features(obj: Any) -> list[Any]:
    if isinstance(obj, list):
        return obj
    if isinstance(obj, Mapping):
        kind = obj.get("type")
        if kind == "FeatureCollection":
            return list(obj.get("features") or [])
        if kind == "Feature":
            return [obj]
        if kind in ("Point", "MultiPoint", "Polygon", "MultiPolygon", "LineString", "GeometryCollection"):
            return [{"type": "Feature", "geometry": obj, "properties": {}}]
    raise ValueError("not GeoJSON: expected a FeatureCollection, a list of features, a Feature or a geometry")


def _label_of(props: Mapping[str, Any]) -> str | None:
    cls = props.get("classification")
    if isinstance(cls, Mapping):
        return cls.get("name")
    if isinstance(cls, str):
        return cls
    return None


class _Builder:
    """Accumulates rows, checks each point, keeps rejections (one line each)."""

    def __init__(self, sizes: Mapping[str, tuple[int, int]], labels: Sequence[str] | None,
                 defaults: Mapping[str, Any], slide: bool = False):
        self.sizes, self.labels, self.defaults = sizes, labels, defaults
        names = SCHEMAS["points"].names + (SLIDE_POINT_FIELDS.names if slide else [])
        self.cols: dict[str, list] = {k: [] for k in names}
        self.rejected: list[str] = []
        self.n_rejected = 0  # points (a line of ``rejected`` may stand for several)

    def reject(self, line: str, n: int = 1) -> None:
        self.rejected.append(line)
        self.n_rejected += n

    def add(self, where: str, image_id: str | None, x: Any, y: Any, label: str | None,
            extra: Mapping[str, Any] | None = None, slide: Mapping[str, Any] | None = None) -> None:
        """Keep the point (``slide``: its ``slide_id``, ``slide_x``, ``slide_y``) or reject it with a line."""
        if image_id is None or image_id not in self.sizes:
            self.reject(f"{where}: unknown image {image_id!r} (not in the manifest)")
            return
        try:
            xf, yf = float(x), float(y)
        except (TypeError, ValueError):
            self.reject(f"{where}: coordinates are not numbers ({x!r}, {y!r})")
            return
        width, height = self.sizes[image_id]
        problem = point_problem(xf, yf, label, width, height, self.labels)
        if problem:
            self.reject(f"{where}: image {image_id}: {problem}")
            return
        row = dict(self.defaults)
        row.update({k: v for k, v in (extra or {}).items() if v is not None and k in SCHEMAS["points"].names})
        origin = row.get("origin")
        if origin not in ORIGINS:
            self.reject(f"{where}: origin {origin!r} is not one of {', '.join(ORIGINS)}")
            return
        row.update(image_id=image_id, x=xf, y=yf, label=label, **(slide or {}))
        created = row.get("created_at")
        if isinstance(created, str):
            row["created_at"] = datetime.fromisoformat(created.replace("Z", "+00:00"))
        for k in self.cols:
            self.cols[k].append(row.get(k))

    def result(self, source: str) -> ImportResult:
        return ImportResult(points_table(self.cols, source=source), self.rejected, self.n_rejected)


def _defaults(annotator: str, round: int, origin: str, created_at: datetime | None) -> dict[str, Any]:
    return {"annotator": annotator, "round": int(round), "origin": origin, "task_id": None,
            "annotation_id": None, "created_at": created_at or UNKNOWN_TIME}


def _qupath_points(source: str, obj: Any, default_label: str | None,
                   reject: Callable[[str], None]) -> Iterator[tuple[str, Any, Any, str | None, Mapping | None]]:
    """``(where, x, y, label, extra)`` for every point of a parsed QuPath GeoJSON document (``Point`` and
    ``MultiPoint`` features; a FeatureCollection, a bare list of features, a Feature or a geometry).

    ``extra``: the nucleate columns saved with the point (``properties.nucleate`` of a feature, or the
    point's entry of the parallel lists ``properties.nucleate_points`` when they have one value per point);
    None for points made in QuPath. Features that are not points are passed to ``reject``, one line each.
    """
    try:
        features = _features(obj)
    except ValueError as exc:
        reject(f"{source}: {exc}")
        return
    for n, feat in enumerate(features):
        where = f"{source}: feature {n}"
        feat = feat if isinstance(feat, Mapping) else {}
        geom = feat.get("geometry") or {}
        props = feat.get("properties") or {}
        label = _label_of(props) or default_label
        extra = props.get("nucleate") if isinstance(props.get("nucleate"), Mapping) else None
        kind = geom.get("type")
        coords = geom.get("coordinates")
        if kind == "Point":
            pts = [coords]
        elif kind == "MultiPoint":
            pts = list(coords or [])
        else:
            reject(f"{where}: geometry {kind!r} is not a point (only Point and MultiPoint)")
            continue
        per_point = props.get("nucleate_points")
        if not (isinstance(per_point, Mapping) and all(isinstance(v, list) and len(v) == len(pts)
                                                       for v in per_point.values())):
            per_point = None  # absent, or edited in QuPath since the export: the defaults fill the columns
        for k, p in enumerate(pts):
            if not isinstance(p, list | tuple) or len(p) < 2:
                reject(f"{where}: point {k} has no (x, y) coordinates: {p!r}")
                continue
            if per_point is not None:
                extra = {c: v[k] for c, v in per_point.items()}
            yield f"{where}" + (f" point {k}" if kind == "MultiPoint" else ""), p[0], p[1], label, extra


def from_qupath(
    documents: Iterable[tuple[str, str, Any]],
    *,
    sizes: Mapping[str, tuple[int, int]],
    labels: Sequence[str] | None,
    default_label: str | None = None,
    annotator: str = "qupath",
    round: int = 0,
    origin: str = "manual",
    created_at: datetime | None = None,
) -> ImportResult:
    """QuPath GeoJSON documents -> points.

    ``documents``: ``(source name, image_id, parsed GeoJSON)`` triples (one image per document, as QuPath
    exports them). ``sizes``: image_id -> (width, height) px. Unclassified points get ``default_label``
    (None: rejected). Columns saved by :func:`to_qupath` under ``properties.nucleate`` are restored;
    otherwise ``annotator``, ``round``, ``origin``, ``created_at`` fill them.
    """
    b = _Builder(sizes, labels, _defaults(annotator, round, origin, created_at))
    for source, image_id, obj in documents:
        for where, x, y, label, extra in _qupath_points(source, obj, default_label, b.reject):
            b.add(where, image_id, x, y, label, extra)
    return b.result("QuPath GeoJSON")


def _slide_xy(table: pa.Table, tiles: Mapping[str, Tile]) -> np.ndarray:
    """Level-0 px ``(n, 2)`` of the rows of a points ``table`` on ``tiles``: its ``slide_x, slide_y`` where set,
    else :func:`nucleate.slides.tile_to_slide` of ``x, y`` on the row's tile."""
    n = table.num_rows
    xy = np.full((n, 2), np.nan)
    if "slide_x" in table.column_names:
        xy[:, 0] = table.column("slide_x").to_numpy()  # nulls read as NaN
        xy[:, 1] = table.column("slide_y").to_numpy()
    todo = np.flatnonzero(np.isnan(xy).any(axis=1))
    if len(todo):
        ids = np.asarray(table.column("image_id").to_pylist(), object)[todo]
        tile_xy = np.column_stack([table.column("x").to_numpy(), table.column("y").to_numpy()])[todo]
        for image_id, rows in group_rows(ids).items():
            xy[todo[rows]] = tile_to_slide(tiles[image_id], tile_xy[rows])
    return xy


def to_qupath_slides(points: pa.Table, tiles: Mapping[str, Tile],
                     labels: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Points on whole-slide tiles -> ``{slide_id: GeoJSON FeatureCollection}`` in the slide's level-0 px.

    ``tiles``: image_id -> :class:`~nucleate.slides.Tile` for every tile the points lie on (raises
    ValueError naming the first point on another image). Coordinates are the points' ``slide_x, slide_y``
    where set, else computed from ``x, y`` (tile px) and the tile. One feature per slide and label, as
    QuPath's Points tool writes it: ``MultiPoint`` geometry, ``objectType`` ``annotation``,
    ``classification`` ``{"name": label, "color": [r, g, b]}``; labels in ``labels`` order (params
    ``labels``, which also fixes the colours), then the others sorted. Points keep the table's row order
    within a feature; their nucleate columns ride along as parallel lists under ``nucleate_points``.
    """
    ids = points.column("image_id").to_pylist()
    unknown = next((i for i in ids if i not in tiles), None)
    if unknown is not None:
        raise ValueError(f"points on image {unknown} cannot be exported on a slide: it is not a tile of the manifest")
    xy = _slide_xy(points, tiles)
    colour = _colours(labels)
    rows = points.select(SCHEMAS["points"].names).to_pylist()
    groups: dict[str, dict[str, list[int]]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(tiles[row["image_id"]].slide_id, {}).setdefault(row["label"], []).append(i)
    out: dict[str, dict[str, Any]] = {}
    for slide_id, by_label in groups.items():
        order = [c for c in labels if c in by_label] + sorted(set(by_label) - set(labels))
        features = []
        for label in order:
            idx = by_label[label]
            metas = [_meta(rows[i]) for i in idx]
            features.append({
                "type": "Feature",
                "id": str(uuid.uuid5(_NS, f"{slide_id}|{label}")),
                "geometry": {"type": "MultiPoint", "coordinates": xy[idx].tolist()},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": label, "color": colour.get(label, _GREY)},
                    "isLocked": False,
                    "nucleate_points": {k: [m[k] for m in metas] for k in metas[0]},
                },
            })
        out[slide_id] = {"type": "FeatureCollection", "features": features}
    return out


def _tile_boxes(tiles: Sequence[Tile]) -> np.ndarray:
    """``(n, 4)`` float64 ``x0, y0, x1, y1`` level-0 px of ``tiles``."""
    return np.array([[t.x0, t.y0, t.x0 + t.width0, t.y0 + t.height0] for t in tiles], np.float64).reshape(-1, 4)


def _locate(boxes: np.ndarray, xy: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Index of the first box holding each point ``(n, 2)``, -1 for none: first the boxes that hold it
    half-open (``x0 <= x < x1``, so a point on an edge shared by two tiles goes to the right / lower one),
    then closed ones (the slide's last column and row of tiles)."""
    out = np.full(len(xy), -1, np.int64)
    if not len(boxes):
        return out
    for s in range(0, len(xy), chunk):
        x, y = xy[s:s + chunk, :1], xy[s:s + chunk, 1:]
        lo = (boxes[:, 0] <= x) & (boxes[:, 1] <= y)
        for inside in (lo & (x < boxes[:, 2]) & (y < boxes[:, 3]), lo & (x <= boxes[:, 2]) & (y <= boxes[:, 3])):
            hit = inside.any(axis=1)
            first = np.where(hit, inside.argmax(axis=1), -1)
            part = out[s:s + chunk]
            part[part < 0] = first[part < 0]
    return out


def from_qupath_slides(
    documents: Iterable[tuple[str, str, Any]],
    *,
    tiles: Mapping[str, Tile],
    labels: Sequence[str] | None,
    default_label: str | None = None,
    annotator: str = "qupath",
    round: int = 0,
    origin: str = "manual",
    created_at: datetime | None = None,
) -> ImportResult:
    """QuPath GeoJSON documents made on whole slides (level-0 px) -> points on the slides' kept tiles.

    ``documents``: ``(source name, slide_id, parsed GeoJSON)`` triples; ``tiles``: image_id -> Tile of the
    manifest's kept tiles. Each point goes to the tile that contains it: the tile named in its saved
    nucleate columns when that tile holds it (an exact round trip), else the first holding tile in row-major
    order (top to bottom, then left to right); its ``x, y`` become tile px (:func:`nucleate.slides.slide_to_tile`)
    and ``slide_id, slide_x, slide_y`` keep the slide coordinates. Points on no kept tile are rejected by
    count, one line per document. Labels, defaults and other rejections as :func:`from_qupath`.
    """
    by_slide: dict[str, list[tuple[str, Tile]]] = {}
    for image_id, tile in sorted(tiles.items(), key=lambda kv: (kv[1].y0, kv[1].x0, kv[0])):
        by_slide.setdefault(tile.slide_id, []).append((image_id, tile))
    sizes = {i: (t.tile_px, t.tile_px) for i, t in tiles.items()}
    b = _Builder(sizes, labels, _defaults(annotator, round, origin, created_at), slide=True)
    for source, slide_id, obj in documents:
        on_slide = by_slide.get(slide_id, [])
        found = []
        for where, x, y, label, extra in _qupath_points(source, obj, default_label, b.reject):
            try:
                xf, yf = float(x), float(y)
            except (TypeError, ValueError):
                b.reject(f"{where}: coordinates are not numbers ({x!r}, {y!r})")
                continue
            if not (math.isfinite(xf) and math.isfinite(yf)):
                b.reject(f"{where}: coordinates are not finite ({xf}, {yf})")
                continue
            found.append((where, xf, yf, label, extra))
        xy = np.array([(f[1], f[2]) for f in found], np.float64).reshape(-1, 2)
        boxes = _tile_boxes([t for _, t in on_slide])
        at = _locate(boxes, xy)
        index = {image_id: k for k, (image_id, _) in enumerate(on_slide)}
        named = np.array([index.get((f[4] or {}).get("image_id"), -1) for f in found], np.int64)
        if len(boxes) and (named >= 0).any():  # the tile saved with the point, when it holds the point
            box = boxes[np.maximum(named, 0)]
            holds = ((box[:, 0] <= xy[:, 0]) & (xy[:, 0] <= box[:, 2]) & (box[:, 1] <= xy[:, 1])
                     & (xy[:, 1] <= box[:, 3]))
            at = np.where((named >= 0) & holds, named, at)
        missed = []
        for (where, x, y, label, extra), k in zip(found, at, strict=True):
            if k < 0:
                missed.append((x, y))
                continue
            image_id, tile = on_slide[k]
            tx, ty = np.clip(slide_to_tile(tile, [x, y])[0], 0.0, tile.tile_px)  # float error at the far edges
            b.add(where, image_id, tx, ty, label, extra, {"slide_id": slide_id, "slide_x": x, "slide_y": y})
        if missed:
            x, y = missed[0]
            b.reject(f"{source}: {len(missed)} point(s) lie on no kept tile of the slide (e.g. ({x:.1f}, {y:.1f}) "
                     "level-0 px), so they were not imported; ingest the slide with a lower "
                     "slides.tissue_threshold to keep those tiles", len(missed))
    return b.result("QuPath GeoJSON (slides)")


def to_coco(
    points: pa.Table,
    images: Sequence[Mapping[str, Any]],
    labels: Sequence[str],
) -> dict[str, Any]:
    """``points`` -> one COCO keypoints document.

    ``images``: dicts with ``image_id``, ``file_name``, ``width``, ``height`` (e.g. manifest rows); every
    image is listed (images without points have no annotations). ``categories`` = ``labels`` (params
    ``labels``) in order (ids from 1) plus any other label found. Keypoints are ``[x - 0.5, y - 0.5, 2]``
    (pixel indices).
    """
    names = list(labels) + sorted(set(points.column("label").to_pylist()) - set(labels))
    cat = {name: i + 1 for i, name in enumerate(names)}
    img_num = {}
    out_images = []
    for n, im in enumerate(images, start=1):
        img_num[im["image_id"]] = n
        out_images.append({"id": n, "file_name": im["file_name"], "width": int(im["width"]),
                           "height": int(im["height"]), "nucleate_image_id": im["image_id"]})
    anns = []
    for k, row in enumerate(points.select(SCHEMAS["points"].names).to_pylist(), start=1):
        if row["image_id"] not in img_num:
            raise ValueError(f"points row {k - 1}: image {row['image_id']} is not among the images to export")
        cx, cy = row["x"] - COCO_OFFSET, row["y"] - COCO_OFFSET
        anns.append({
            "id": k, "image_id": img_num[row["image_id"]], "category_id": cat[row["label"]],
            "keypoints": [cx, cy, 2], "num_keypoints": 1,
            "bbox": [row["x"] - 0.5, row["y"] - 0.5, 1.0, 1.0], "area": 1.0, "iscrowd": 0,
            "nucleate": _meta(row),
        })
    return {
        "info": {"description": "nucleate point annotations (one keypoint per nucleus)",
                 "keypoint_convention": "pixel indices: the centre of pixel [row, col] is (col, row)"},
        "images": out_images,
        "annotations": anns,
        "categories": [{"id": i, "name": n, "supercategory": "nucleus", "keypoints": ["center"], "skeleton": []}
                       for n, i in cat.items()],
    }


def from_coco(
    doc: Mapping[str, Any],
    *,
    sizes: Mapping[str, tuple[int, int]] | None = None,
    names: Mapping[str, str] | None = None,
    labels: Sequence[str] | None = None,
    annotator: str = "coco",
    round: int = 0,
    origin: str = "manual",
) -> ImportResult:
    """A COCO keypoints document -> points (first keypoint of each annotation, visibility > 0).

    Images are identified by ``nucleate_image_id`` when present, else their ``file_name`` through
    ``names`` (file name or relative path -> image_id). ``sizes`` defaults to the document's own widths
    and heights.
    """
    names = names or {}
    images = {}
    for im in doc.get("images") or []:
        image_id = im.get("nucleate_image_id") or names.get(im.get("file_name", "")) \
            or names.get(str(im.get("file_name", "")).rsplit("/", 1)[-1])
        images[im["id"]] = (image_id, int(im.get("width", 0)), int(im.get("height", 0)))
    if sizes is None:
        sizes = {i: (w, h) for i, w, h in images.values() if i is not None}
    cats = {c["id"]: c["name"] for c in doc.get("categories") or []}
    b = _Builder(sizes, labels, _defaults(annotator, round, origin, None))
    for n, ann in enumerate(doc.get("annotations") or []):
        where = f"COCO annotation {ann.get('id', n)}"
        kp = ann.get("keypoints") or []
        if len(kp) < 3 or kp[2] == 0:
            b.reject(f"{where}: no visible keypoint")
            continue
        image_id = images.get(ann.get("image_id"), (None,))[0]
        extra = ann.get("nucleate") if isinstance(ann.get("nucleate"), Mapping) else None
        b.add(where, image_id, float(kp[0]) + COCO_OFFSET, float(kp[1]) + COCO_OFFSET,
              cats.get(ann.get("category_id")), extra)
    return b.result("COCO keypoints")


def from_csv(
    text: str,
    *,
    source: str,
    sizes: Mapping[str, tuple[int, int]],
    names: Mapping[str, str] | None = None,
    labels: Sequence[str] | None,
    default_label: str | None = None,
    annotator: str = "csv",
    round: int = 0,
    origin: str = "manual",
) -> ImportResult:
    """CSV text -> points (see the module docstring for the columns). Bad rows are rejected one by one,
    naming ``source`` and the line number; a missing coordinate or image column is an error."""
    names = names or {}
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    if {"x", "y"} <= set(header):
        mode = "xy"
    elif {"row", "col"} <= set(header):
        mode = "rc"
    else:
        raise ValueError(f"{source}: needs columns x,y (pixels, corner origin) or row,col (pixel indices); "
                         f"found: {', '.join(header) or 'no header'}")
    if "image_id" not in header and "image" not in header:
        raise ValueError(f"{source}: needs a column image_id or image (file name or path from the manifest)")
    b = _Builder(sizes, labels, _defaults(annotator, round, origin, None))
    for line, row in enumerate(reader, start=2):
        where = f"{source}: line {line}"
        image_id = (row.get("image_id") or "").strip() or None
        if image_id is None and row.get("image"):
            key = row["image"].strip()
            image_id = names.get(key) or names.get(key.rsplit("/", 1)[-1])
            if image_id is None:
                b.reject(f"{where}: image {key!r} is not in the manifest")
                continue
        label = (row.get("label") or "").strip() or default_label
        extra = {"annotator": (row.get("annotator") or "").strip() or None}
        if mode == "xy":
            x, y = row.get("x"), row.get("y")
        else:
            try:
                x, y = float(row["col"]) + 0.5, float(row["row"]) + 0.5
            except (TypeError, ValueError):
                b.reject(f"{where}: row/col are not numbers ({row.get('row')!r}, {row.get('col')!r})")
                continue
        b.add(where, image_id, x, y, label, extra)
    return b.result(source)


def qupath_detection(
    xy: Sequence[float], score: float, label: str, labels: Sequence[str] = (), *,
    outline: Any = None, key: str, properties: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One predicted nucleus as a QuPath *detection* feature (File > Import objects; pixel units, origin at the
    image's top-left corner, as :func:`to_qupath`).

    ``xy``: its centre (x, y) px; ``outline``: a closed ring ``(n, 2)`` (x, y) px, first point = last, making the
    geometry a ``Polygon`` (else a ``Point`` at ``xy``). ``score`` is the ``measurements`` entry ``score``;
    ``label`` the classification, coloured as in :func:`to_qupath` (``labels`` = params ``labels``). The feature id
    is a UUID derived from ``key`` (reproducible). ``properties``: extra values under ``properties.nucleate``
    (with the centre as ``x``, ``y``). Coordinates are rounded to 0.01 px.
    """
    labels = list(labels)
    colour = _rgb(PALETTE[labels.index(label) % len(PALETTE)]) if label in labels else [128, 128, 128]
    x, y = round(float(xy[0]), 2), round(float(xy[1]), 2)
    if outline is None:
        geometry = {"type": "Point", "coordinates": [x, y]}
    else:
        ring = [[round(float(a), 2), round(float(b), 2)] for a, b in outline]
        geometry = {"type": "Polygon", "coordinates": [ring]}
    return {
        "type": "Feature",
        "id": str(uuid.uuid5(_NS, key)),
        "geometry": geometry,
        "properties": {
            "objectType": "detection",
            "classification": {"name": label, "color": colour},
            "isLocked": False,
            "measurements": {"score": round(float(score), 4)},
            "nucleate": {"x": x, "y": y, **(properties or {})},
        },
    }
