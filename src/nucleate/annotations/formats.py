"""Points tables <-> QuPath GeoJSON, COCO keypoints and CSV (pure: dicts and text in, dicts and tables out).

Coordinate conventions (nucleate: ``x`` = column, ``y`` = row, float pixels, origin at the top-left
*corner* of the top-left pixel, so pixel ``[r, c]`` has its centre at ``(c + 0.5, r + 0.5)``):

* **QuPath GeoJSON** uses the same convention (pixel units, origin at the image's top-left corner): no
  offset. Export writes one ``Point`` feature per point (an annotation, ``classification.name`` =
  label) with nucleate's own columns under ``properties.nucleate``; import reads ``Point`` and
  ``MultiPoint`` features (other geometries are rejected one by one).
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
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from nucleate.annotations.labelstudio import PALETTE, point_problem
from nucleate.annotations.points import UNKNOWN_TIME, points_table
from nucleate.io.tables import ORIGINS, SCHEMAS

__all__ = [
    "ImportResult",
    "to_qupath",
    "qupath_detection",
    "from_qupath",
    "to_coco",
    "from_coco",
    "from_csv",
    "COCO_OFFSET",
]

COCO_OFFSET = 0.5  # nucleate x - COCO x (pixel corners vs pixel indices)
_NS = uuid.UUID("6f0c1f2e-5b7a-4e8b-9a35-2c1d0b5e7a10")  # uuid5 namespace for stable feature ids


@dataclass
class ImportResult:
    """Imported points (validated ``points`` table) and one line per rejected point."""

    points: pa.Table
    rejected: list[str]


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


def to_qupath(points: pa.Table, labels: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """``points`` -> ``{image_id: GeoJSON FeatureCollection}`` (one ``Point`` feature per row).

    ``labels`` (params ``labels``) fixes label colours (same palette as the Label Studio config); other
    labels get grey. Feature ids are UUIDs derived from the row's content, so exports are reproducible.
    """
    colour = {c: _rgb(PALETTE[i % len(PALETTE)]) for i, c in enumerate(labels)}
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
                "classification": {"name": row["label"], "color": colour.get(row["label"], [128, 128, 128])},
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
                 defaults: Mapping[str, Any]):
        self.sizes, self.labels, self.defaults = sizes, labels, defaults
        self.cols: dict[str, list] = {k: [] for k in SCHEMAS["points"].names}
        self.rejected: list[str] = []

    def add(self, where: str, image_id: str | None, x: Any, y: Any, label: str | None,
            extra: Mapping[str, Any] | None = None) -> None:
        if image_id is None or image_id not in self.sizes:
            self.rejected.append(f"{where}: unknown image {image_id!r} (not in the manifest)")
            return
        try:
            xf, yf = float(x), float(y)
        except (TypeError, ValueError):
            self.rejected.append(f"{where}: coordinates are not numbers ({x!r}, {y!r})")
            return
        width, height = self.sizes[image_id]
        problem = point_problem(xf, yf, label, width, height, self.labels)
        if problem:
            self.rejected.append(f"{where}: image {image_id}: {problem}")
            return
        row = dict(self.defaults)
        row.update({k: v for k, v in (extra or {}).items() if v is not None and k in self.cols})
        origin = row.get("origin")
        if origin not in ORIGINS:
            self.rejected.append(f"{where}: origin {origin!r} is not one of {', '.join(ORIGINS)}")
            return
        row.update(image_id=image_id, x=xf, y=yf, label=label)
        created = row.get("created_at")
        if isinstance(created, str):
            row["created_at"] = datetime.fromisoformat(created.replace("Z", "+00:00"))
        for k in self.cols:
            self.cols[k].append(row.get(k))

    def result(self, source: str) -> ImportResult:
        return ImportResult(points_table(self.cols, source=source), self.rejected)


def _defaults(annotator: str, round: int, origin: str, created_at: datetime | None) -> dict[str, Any]:
    return {"annotator": annotator, "round": int(round), "origin": origin, "task_id": None,
            "annotation_id": None, "created_at": created_at or UNKNOWN_TIME}


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
        try:
            features = _features(obj)
        except ValueError as exc:
            b.rejected.append(f"{source}: {exc}")
            continue
        for n, feat in enumerate(features):
            where = f"{source}: feature {n}"
            geom = (feat or {}).get("geometry") or {}
            props = (feat or {}).get("properties") or {}
            label = _label_of(props) or default_label
            extra = props.get("nucleate") if isinstance(props.get("nucleate"), Mapping) else None
            kind = geom.get("type")
            coords = geom.get("coordinates")
            if kind == "Point":
                pts = [coords]
            elif kind == "MultiPoint":
                pts = list(coords or [])
            else:
                b.rejected.append(f"{where}: geometry {kind!r} is not a point (only Point and MultiPoint)")
                continue
            for k, p in enumerate(pts):
                if not isinstance(p, list | tuple) or len(p) < 2:
                    b.rejected.append(f"{where}: point {k} has no (x, y) coordinates: {p!r}")
                    continue
                b.add(f"{where}" + (f" point {k}" if kind == "MultiPoint" else ""), image_id, p[0], p[1],
                      label, extra)
    return b.result("QuPath GeoJSON")


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
            b.rejected.append(f"{where}: no visible keypoint")
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
                b.rejected.append(f"{where}: image {key!r} is not in the manifest")
                continue
        label = (row.get("label") or "").strip() or default_label
        extra = {"annotator": (row.get("annotator") or "").strip() or None}
        if mode == "xy":
            x, y = row.get("x"), row.get("y")
        else:
            try:
                x, y = float(row["col"]) + 0.5, float(row["row"]) + 0.5
            except (TypeError, ValueError):
                b.rejected.append(f"{where}: row/col are not numbers ({row.get('row')!r}, {row.get('col')!r})")
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
