"""Label Studio keypoints <-> pixel points (pure conversions; no client, no network, no env).

Label Studio stores a keypoint as percentages of the image size::

    {"from_name": "kp", "to_name": "image", "type": "keypointlabels",
     "original_width": W, "original_height": H,
     "value": {"x": 100 * x / W, "y": 100 * y / H, "width": <marker size, % of W>, "keypointlabels": [label]}}

and the percentages are relative to the corner of the image, so with nucleate's points convention
(``x`` = column, ``y`` = row, float pixels, origin at the top-left *corner* of the top-left pixel) the
conversion is a plain scale with no half-pixel offset: ``x_px = x_pct * W / 100``. Percentages do not
depend on the displayed size, so a point converts back with the image's true size (the task's
``width``/``height``) even if the annotator's browser scaled the image.

``result["origin"]`` is ``"manual"`` for a click in the UI and ``"prediction"`` for a pre-annotation
that was kept unchanged (``"prediction-changed"`` once moved: that is the annotator's own point).
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from nucleate.annotations.points import points_table, rows_by_image
from nucleate.io.tables import empty_table

__all__ = [
    "FROM_NAME",
    "TO_NAME",
    "PALETTE",
    "labeling_config",
    "keypoint_results",
    "keypoint_points",
    "point_problem",
    "prediction_points",
    "Rejected",
    "CollectedPoints",
    "collect_points",
    "task_progress",
    "task_finished",
]

#: Control (``from_name``) and object (``to_name``) tag names of the generated labeling config.
FROM_NAME = "kp"
TO_NAME = "image"
#: Label colours, cycled over the point labels in order (readable on gray fluorescence images).
PALETTE = ("#22c55e", "#ef4444", "#3b82f6", "#f59e0b", "#a855f7", "#06b6d4", "#ec4899", "#84cc16")


def labeling_config(labels: Sequence[str]) -> str:
    """Label Studio labeling config: a ``Header`` showing the task's ``name`` (an image's path; for a whole-slide
    tile ``slide <path> at (x0, y0)``), one zoomable ``Image`` and ``KeyPointLabels`` with one label per entry
    of ``labels`` (params ``labels``: what annotators click, not the teacher's classes).

    Hotkeys ``1``, ``2``, ... select ``labels`` in order (Label Studio assigns them by position).
    """
    labels = list(labels)
    if not labels:
        raise ValueError("labels is empty: the labeling config needs at least one point label (params: labels)")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels has duplicate names: {labels} (params: labels)")
    tags = "\n".join(
        f'    <Label value="{html.escape(name, quote=True)}" background="{PALETTE[i % len(PALETTE)]}"/>'
        for i, name in enumerate(labels)
    )
    return (
        "<View>\n"
        '  <Header value="$name" size="6"/>\n'  # no name attribute: display only, not a data field LS requires
        f'  <Image name="{TO_NAME}" value="${TO_NAME}" zoom="true" zoomControl="true"/>\n'
        f'  <KeyPointLabels name="{FROM_NAME}" toName="{TO_NAME}" strokeWidth="2">\n'
        f"{tags}\n"
        "  </KeyPointLabels>\n"
        "</View>"
    )


def keypoint_results(
    xy: np.ndarray,
    labels: Sequence[str],
    width: int,
    height: int,
    *,
    scores: Sequence[float] | np.ndarray | None = None,
    marker_pct: float = 0.6,
    origin: str | Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Pixel points ``xy`` (K, 2) as (x, y) -> Label Studio keypoint results for a ``width`` x ``height`` image.

    ``labels`` (K,) class names; ``scores`` (K,) optional confidences (predictions); ``marker_pct`` is the
    drawn dot size in percent of the image width (display only); ``origin`` (one for all, or one per
    point) is stored as the result's ``origin`` when given (the UI writes ``manual``/``prediction``).
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if len(labels) != len(xy):
        raise ValueError(f"{len(xy)} points but {len(labels)} labels")
    if scores is not None and len(scores) != len(xy):
        raise ValueError(f"{len(xy)} points but {len(scores)} scores")
    origins = [origin] * len(xy) if origin is None or isinstance(origin, str) else list(origin)
    if len(origins) != len(xy):
        raise ValueError(f"{len(xy)} points but {len(origins)} origins")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    out = []
    for i, ((x, y), label) in enumerate(zip(xy.tolist(), labels, strict=True)):
        result: dict[str, Any] = {
            "id": f"p{i}",
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "type": "keypointlabels",
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": 0,
            "value": {"x": 100.0 * x / width, "y": 100.0 * y / height, "width": float(marker_pct),
                      "keypointlabels": [str(label)]},
        }
        if scores is not None:
            result["score"] = float(scores[i])
        if origins[i] is not None:
            result["origin"] = origins[i]
        out.append(result)
    return out


def point_problem(x: float, y: float, label: str | None, width: int, height: int,
                  labels: Sequence[str] | None) -> str | None:
    """Why a point cannot be kept, or None when it is fine.

    A point must be finite and inside the image, ``0 <= x <= width`` and ``0 <= y <= height`` (pixel
    corners), and its label must be one of ``labels`` (params ``labels``; when given).
    """
    if label is None or label == "":
        return "has no label"
    if labels is not None and label not in labels:
        return f"unknown label {label!r} (known: {', '.join(labels)})"
    if not (math.isfinite(x) and math.isfinite(y)):
        return f"coordinates are not finite ({x}, {y})"
    if not (0.0 <= x <= width and 0.0 <= y <= height):
        return f"outside the image: ({x:.2f}, {y:.2f}) px, image is {width} x {height} px"
    return None


def keypoint_points(
    results: Iterable[Mapping[str, Any]],
    *,
    width: int | None = None,
    height: int | None = None,
    labels: Sequence[str] | None = None,
) -> tuple[list[tuple[float, float, str, str]], list[tuple[float | None, float | None, str | None, str]]]:
    """Keypoint results -> ``(kept, rejected)``.

    ``kept``: ``(x, y, label, origin)`` in pixels (origin ``manual`` or ``prediction``); ``rejected``:
    ``(x, y, label, reason)`` for each result that is not a single-label keypoint inside the image with a
    label in ``labels``. ``width``/``height`` are the image's true size in pixels; when None, each
    result's ``original_width``/``original_height`` is used.
    """
    kept, rejected = [], []
    for r in results:
        rtype = r.get("type")
        value = r.get("value") or {}
        if rtype != "keypointlabels":
            rejected.append((None, None, None, f"not a keypoint (result type {rtype!r})"))
            continue
        names = value.get("keypointlabels") or []
        label = names[0] if len(names) == 1 else None
        w = width if width is not None else r.get("original_width")
        h = height if height is not None else r.get("original_height")
        try:
            x = float(value["x"]) * float(w) / 100.0
            y = float(value["y"]) * float(h) / 100.0
        except (KeyError, TypeError, ValueError):
            rejected.append((None, None, label, "no x/y percentages or no image size in the result"))
            continue
        if len(names) > 1:
            rejected.append((x, y, None, f"several labels {names}; one label per point"))
            continue
        problem = point_problem(x, y, label, int(w), int(h), labels)
        if problem:
            rejected.append((x, y, label, problem))
            continue
        origin = "prediction" if r.get("origin") == "prediction" else "manual"
        kept.append((x, y, label, origin))
    return kept, rejected


def prediction_points(
    predictions: pa.Table, sizes: Mapping[str, tuple[int, int]], labels: Sequence[str] | None
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """A student's predicted points of the images in ``sizes`` (image_id -> (width, height) px), grouped
    for pre-annotation: ``(image_id -> {"xy" (K, 2) float64, "label" [K], "score" [K]}, rejected lines)``.

    ``predictions`` is a points table or any table with ``image_id``, ``x``, ``y``, ``label`` and an optional
    ``score`` (missing or null: 1.0). Rows of other images are ignored; points outside their image or
    with a label not in ``labels`` are left out, one line each naming the row.
    """
    for name in ("image_id", "x", "y", "label"):
        if name not in predictions.column_names:
            raise ValueError(f"predictions table has no column '{name}' (needs image_id, x, y, label[, score])")
    cols = {n: predictions.column(n).to_pylist() for n in ("x", "y", "label")}
    scores = predictions.column("score").to_pylist() if "score" in predictions.column_names else None
    grouped: dict[str, dict[str, Any]] = {}
    rejected: list[tuple[int, str]] = []
    for image_id, rows in rows_by_image(predictions).items():
        if image_id not in sizes:
            continue
        width, height = sizes[image_id]
        xy, names, score = [], [], []
        for i in rows.tolist():
            x, y, label = cols["x"][i], cols["y"][i], cols["label"][i]
            problem = point_problem(float(x), float(y), label, width, height, labels)
            if problem:
                rejected.append((i, f"prediction row {i} (image {image_id}) left out: {problem}"))
                continue
            xy.append((x, y))
            names.append(label)
            score.append(1.0 if scores is None or scores[i] is None else float(scores[i]))
        if xy:
            grouped[image_id] = {"xy": np.asarray(xy, np.float64), "label": names, "score": score}
    return grouped, [line for _, line in sorted(rejected)]


@dataclass(frozen=True)
class Rejected:
    """One point (or annotation) left out of the points table, with the reason."""

    image_id: str
    task_id: int
    annotation_id: int | None
    annotator: str | None
    x: float | None
    y: float | None
    label: str | None
    reason: str

    def line(self) -> str:
        where = f"image {self.image_id} (task {self.task_id}"
        where += f", annotation {self.annotation_id}, {self.annotator})" if self.annotation_id else ")"
        point = "" if self.x is None else f" point ({self.x:.2f}, {self.y:.2f}) {self.label!r}"
        return f"rejected {where}{point}: {self.reason}"


@dataclass
class CollectedPoints:
    """Points collected from Label Studio tasks, and what was left out (see :func:`collect_points`)."""

    points: pa.Table
    tasks: int = 0
    annotated_tasks: int = 0
    skipped_tasks: int = 0
    annotations: int = 0
    cancelled: int = 0
    superseded: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    missing_image_ids: list[str] = field(default_factory=list)
    annotators: dict[str, list[str]] = field(default_factory=dict)  # image_id -> annotators

    @classmethod
    def combine(cls, parts: Sequence[CollectedPoints]) -> CollectedPoints:
        """One result from results of disjoint task sets (e.g. rounds)."""
        # promote: parts with and without the optional slide columns combine (absent values read as null)
        tables = [p.points for p in parts]
        out = cls(points=pa.concat_tables(tables, promote_options="default") if tables else empty_table("points"))
        for p in parts:
            for name in ("tasks", "annotated_tasks", "skipped_tasks", "annotations", "cancelled", "superseded"):
                setattr(out, name, getattr(out, name) + getattr(p, name))
            out.rejected.extend(p.rejected)
            out.missing_image_ids.extend(p.missing_image_ids)
            out.annotators.update(p.annotators)
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "annotated_tasks": self.annotated_tasks,
            "skipped_tasks": self.skipped_tasks,
            "annotations": self.annotations,
            "cancelled_annotations": self.cancelled,
            "superseded_annotations": self.superseded,
            "points": self.points.num_rows,
            "rejected_points": len(self.rejected),
            "deleted_tasks": len(self.missing_image_ids),
        }


def _timestamp(text: Any) -> datetime:
    if isinstance(text, datetime):
        return text.astimezone(UTC)
    if not text:
        return datetime.fromtimestamp(0, UTC)
    return datetime.fromisoformat(str(text).replace("Z", "+00:00")).astimezone(UTC)


def _user_name(completed_by: Any, users: Mapping[int, str]) -> str:
    if isinstance(completed_by, Mapping):  # some exports expand the user
        return str(completed_by.get("email") or users.get(completed_by.get("id"), completed_by.get("id")))
    return users.get(completed_by, f"user-{completed_by}")


def collect_points(
    tasks: Iterable[Mapping[str, Any]],
    *,
    labels: Sequence[str] | None,
    users: Mapping[int, str] | None = None,
    rounds: Sequence[int] | None = None,
    expected_image_ids: Iterable[str] | None = None,
    default_round: int = 0,
) -> CollectedPoints:
    """Label Studio tasks (export ``JSON`` shape) -> a validated ``points`` table and a report.

    Each task's ``data`` carries ``image_id``, ``round``, ``width`` and ``height`` (as pushed). Per task
    and annotator only the most recently updated annotation counts (an annotator who saved twice has
    their earlier version *superseded*); ``was_cancelled`` (skipped) annotations are counted and give no
    points. Points outside the image or with a label not in ``labels`` are rejected one by one, the rest
    of that annotation is kept. ``users`` maps user id -> name (``annotator`` column); ``rounds`` keeps only
    tasks of those rounds; ``expected_image_ids`` (what was pushed) that have no task are reported in
    ``missing_image_ids`` (deleted in Label Studio). ``created_at`` is the annotation's last update.
    """
    users = users or {}
    cols: dict[str, list] = {k: [] for k in ("image_id", "x", "y", "label", "annotator", "task_id",
                                             "annotation_id", "round", "origin", "created_at")}
    res = CollectedPoints(points=empty_table("points"))
    seen_ids: set[str] = set()
    wanted = None if rounds is None else {int(r) for r in rounds}
    for task in tasks:
        data = task.get("data") or {}
        image_id = str(data.get("image_id") or f"task-{task.get('id')}")
        task_round = int(data.get("round", default_round))
        seen_ids.add(image_id)
        if wanted is not None and task_round not in wanted:
            continue
        res.tasks += 1
        task_id = int(task["id"])
        width, height = data.get("width"), data.get("height")
        latest: dict[str, Mapping[str, Any]] = {}
        cancelled = 0
        for ann in task.get("annotations") or []:
            res.annotations += 1
            if ann.get("was_cancelled"):
                cancelled += 1
                continue
            who = _user_name(ann.get("completed_by"), users)
            prev = latest.get(who)
            if prev is not None:
                res.superseded += 1
                if (_timestamp(ann.get("updated_at")), ann.get("id", 0)) < (
                        _timestamp(prev.get("updated_at")), prev.get("id", 0)):
                    continue
            latest[who] = ann
        res.cancelled += cancelled
        if latest:
            res.annotated_tasks += 1
        elif cancelled:
            res.skipped_tasks += 1
        res.annotators[image_id] = sorted(latest)
        for who, ann in sorted(latest.items()):
            kept, rejected = keypoint_points(
                ann.get("result") or [],
                width=int(width) if width else None,
                height=int(height) if height else None,
                labels=labels,
            )
            ann_id = int(ann["id"]) if ann.get("id") is not None else None
            for x, y, label, reason in rejected:
                res.rejected.append(Rejected(image_id, task_id, ann_id, who, x, y, label, reason))
            stamp = _timestamp(ann.get("updated_at") or ann.get("created_at"))
            for x, y, label, origin in kept:
                for name, value in (("image_id", image_id), ("x", x), ("y", y), ("label", label),
                                    ("annotator", who), ("task_id", task_id), ("annotation_id", ann_id),
                                    ("round", task_round), ("origin", origin), ("created_at", stamp)):
                    cols[name].append(value)
    if expected_image_ids is not None:
        res.missing_image_ids = sorted({str(i) for i in expected_image_ids} - seen_ids)
    res.points = points_table(cols, source="Label Studio annotations")
    return res


def task_finished(task: Mapping[str, Any]) -> bool:
    """True when a task (export or task-list shape) is done: at least one submitted or skipped annotation.

    Uses the ``total_annotations`` (submitted) and ``cancelled_annotations`` (skipped) counters when
    present, else the task's ``annotations`` list.
    """
    if "total_annotations" in task or "cancelled_annotations" in task:
        return int(task.get("total_annotations") or 0) > 0 or int(task.get("cancelled_annotations") or 0) > 0
    return bool(task.get("annotations"))


def task_progress(tasks: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Round progress from task counters (``total_annotations`` = submitted, ``cancelled_annotations`` = skipped).

    Returns ``total``, ``finished`` (annotated or skipped), ``annotated``, ``skipped``, ``open``.
    """
    total = annotated = skipped = 0
    for t in tasks:
        total += 1
        if int(t.get("total_annotations") or 0) > 0:
            annotated += 1
        elif int(t.get("cancelled_annotations") or 0) > 0:
            skipped += 1
    finished = annotated + skipped
    return {"total": total, "finished": finished, "annotated": annotated, "skipped": skipped,
            "open": total - finished}
