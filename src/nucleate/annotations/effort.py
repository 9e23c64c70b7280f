"""What a round of annotation cost, and how much the pre-annotations helped (pure; from a raw export).

Input: the tasks of one Label Studio JSON export (``storage/annotations/round-NNN/export.json``, the list
:func:`tasks.points.read_round` returns), each with ``data`` (``image_id``, ``width``/``height`` in pixels, as
pushed) and ``annotations``.

**Cost.** Every annotation carries Label Studio's ``lead_time``: the seconds the annotator's editor was open
on the task before submitting (or skipping) — wall-clock time, *idle time included* (a coffee break with the
task open counts), so it is an upper bound of the work. An annotation whose ``lead_time`` is missing (made
through the API without one, or imported) has no cost and is counted in ``untimed``. Per finished
(submitted, not skipped) annotation: seconds per image, and seconds per point (= click; a pre-annotation the
annotator kept counts as a point, as in the learning curve's clicks). Annotator minutes are the lead times
of *all* annotations, skipped ones included (the time was spent), over 60.

**Pre-annotations.** Label Studio 1.23 exports a task's ``predictions`` as ids only; what the annotator saw
is stored with each annotation as ``annotation["prediction"]`` (the task's prediction of the project's
model version when the annotation was created; ``{}`` when there was none). Those predicted points are
matched one-to-one to the annotation's final points within ``radius_px``
(:func:`nucleate.annotations.agreement.match_points`, maximum pairs then minimum total distance):
``kept`` = matched and moved less than :data:`MOVED_PX`, ``moved`` = matched and moved farther, ``deleted``
= predictions left unmatched, ``added`` = final points left unmatched (the annotator's own clicks);
``relabeled`` = matched pairs whose label changed (a position count: they are in kept or moved too). A
task that has predictions but whose annotation recorded none (the project's model version differed from
the prediction's, so the editor showed none) counts in ``prediction_not_recorded``.

Points are read with :func:`nucleate.annotations.labelstudio.keypoint_points` (percent -> pixels with the
task's true size); results it rejects (outside the image, unknown label) are left out on both sides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nucleate.annotations.agreement import match_points
from nucleate.annotations.labelstudio import keypoint_points

__all__ = ["MOVED_PX", "AnnotationEffort", "PreannotationUse", "RoundEffort", "round_effort"]

#: a matched pre-annotation that ends up this far (pixels) or farther from where it was predicted was moved
MOVED_PX = 0.5


@dataclass(frozen=True)
class AnnotationEffort:
    """One finished annotation: its ``lead_time`` (seconds; None when not recorded) and final ``points``."""

    task_id: int
    annotation_id: int | None
    image_id: str
    seconds: float | None
    points: int


@dataclass
class PreannotationUse:
    """Predicted vs final points, summed over the annotations that had a prediction (see the module docstring)."""

    annotations: int = 0
    predicted: int = 0
    final: int = 0
    kept: int = 0
    moved: int = 0
    deleted: int = 0
    added: int = 0
    relabeled: int = 0
    moved_px: list[float] = field(default_factory=list)  # distance of each moved point, pixels

    @property
    def matched(self) -> int:
        """Predicted points the annotator kept in place or moved (= kept + moved)."""
        return self.kept + self.moved

    def as_dict(self) -> dict[str, Any]:
        return {"annotations": self.annotations, "predicted": self.predicted, "final": self.final,
                "matched": self.matched, "kept": self.kept, "moved": self.moved, "deleted": self.deleted,
                "added": self.added, "relabeled": self.relabeled,
                "kept_fraction": _ratio(self.kept, self.predicted),
                "median_move_px": _round(float(np.median(self.moved_px))) if self.moved_px else None}


@dataclass
class RoundEffort:
    """Cost and pre-annotation use of one round's export (:func:`round_effort`)."""

    radius_px: float
    tasks: int = 0
    annotated_tasks: int = 0  # at least one finished annotation
    skipped_tasks: int = 0  # only skipped annotations
    finished: list[AnnotationEffort] = field(default_factory=list)
    skipped: int = 0  # annotations skipped (Label Studio: ``was_cancelled``)
    skipped_seconds: float = 0.0
    untimed: int = 0  # annotations (finished or skipped) without a lead_time
    prediction_not_recorded: int = 0
    preannotations: PreannotationUse = field(default_factory=PreannotationUse)

    @property
    def open_tasks(self) -> int:
        return self.tasks - self.annotated_tasks - self.skipped_tasks

    @property
    def points(self) -> int:
        """Points of the finished annotations."""
        return sum(a.points for a in self.finished)

    @property
    def seconds(self) -> float:
        """Lead time of every annotation, finished and skipped (seconds, idle time included)."""
        return sum(a.seconds for a in self.finished if a.seconds is not None) + self.skipped_seconds

    @property
    def minutes(self) -> float:
        """Annotator minutes: :attr:`seconds` / 60."""
        return self.seconds / 60.0

    def per_image(self) -> np.ndarray:
        """Seconds of each timed finished annotation, (K,) float64."""
        return np.asarray([a.seconds for a in self.finished if a.seconds is not None], np.float64)

    def per_click(self) -> np.ndarray:
        """Seconds per point of each timed finished annotation with at least one point, (K,) float64."""
        return np.asarray([a.seconds / a.points for a in self.finished if a.seconds is not None and a.points],
                          np.float64)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (seconds and minutes rounded to 0.01, fractions to 1e-4; None where undefined)."""
        per_image, per_click = self.per_image(), self.per_click()
        timed_points = sum(a.points for a in self.finished if a.seconds is not None)
        timed_seconds = float(per_image.sum())
        return {
            "tasks": self.tasks, "annotated_tasks": self.annotated_tasks, "skipped_tasks": self.skipped_tasks,
            "open_tasks": self.open_tasks, "annotations": len(self.finished), "skipped_annotations": self.skipped,
            "untimed_annotations": self.untimed, "points": self.points,
            "annotator_minutes": _round(self.minutes), "skipped_minutes": _round(self.skipped_seconds / 60.0),
            "seconds_per_image": {"mean": _stat(per_image, np.mean), "median": _stat(per_image, np.median)},
            "seconds_per_click": {"mean": _stat(per_click, np.mean), "median": _stat(per_click, np.median),
                                  "pooled": _round(timed_seconds / timed_points) if timed_points else None},
            "preannotations": {"radius_px": self.radius_px, "moved_px": MOVED_PX,
                               "prediction_not_recorded": self.prediction_not_recorded,
                               **self.preannotations.as_dict()},
        }


def _round(value: float, digits: int = 2) -> float:
    return round(float(value), digits)


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def _stat(values: np.ndarray, fn: Any) -> float | None:
    return _round(fn(values)) if values.size else None


def _lead_time(ann: Mapping[str, Any]) -> float | None:
    value = ann.get("lead_time")
    try:
        seconds = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return seconds if seconds is not None and np.isfinite(seconds) and seconds >= 0 else None


def _prediction_result(ann: Mapping[str, Any], task: Mapping[str, Any]) -> list[Any] | None:
    """The keypoint results the annotator was shown: the annotation's recorded prediction; else (an export that
    expands predictions) the task's latest prediction object; None when there is none to know of."""
    shown = ann.get("prediction")
    if isinstance(shown, Mapping) and shown.get("result") is not None:
        return list(shown["result"])
    expanded = [p for p in task.get("predictions") or [] if isinstance(p, Mapping) and p.get("result") is not None]
    if expanded:
        return list(max(expanded, key=lambda p: p.get("id") or 0)["result"])
    return None


def _xy_labels(results: Iterable[Mapping[str, Any]], width: int | None, height: int | None,
               labels: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    kept, _ = keypoint_points(results, width=width, height=height, labels=labels)
    xy = np.asarray([(x, y) for x, y, _, _ in kept], np.float64).reshape(-1, 2)
    return xy, [label for _, _, label, _ in kept]


def round_effort(
    tasks: Iterable[Mapping[str, Any]],
    *,
    radius_px: float,
    labels: Sequence[str] | None = None,
) -> RoundEffort:
    """Cost and pre-annotation use of the ``tasks`` of one Label Studio JSON export (module docstring).

    ``radius_px``: matching radius in pixels (params ``labelstudio.agreement_radius_px``); ``labels``: the
    point labels annotators may click (params ``labels``; points with others are left out; None keeps every
    label). Every finished annotation counts, also an annotator's earlier version of a task (its time was spent).
    """
    out = RoundEffort(radius_px=float(radius_px))
    use = out.preannotations
    for task in tasks:
        out.tasks += 1
        data = task.get("data") or {}
        width = int(data["width"]) if data.get("width") else None
        height = int(data["height"]) if data.get("height") else None
        image_id = str(data.get("image_id") or f"task-{task.get('id')}")
        done = skipped = 0
        for ann in task.get("annotations") or []:
            seconds = _lead_time(ann)
            out.untimed += seconds is None
            if ann.get("was_cancelled"):
                skipped += 1
                out.skipped_seconds += seconds or 0.0
                continue
            done += 1
            final_xy, final_labels = _xy_labels(ann.get("result") or [], width, height, labels)
            out.finished.append(AnnotationEffort(
                int(task["id"]), int(ann["id"]) if ann.get("id") is not None else None, image_id, seconds,
                len(final_xy)))
            shown = _prediction_result(ann, task)
            if shown is None and task.get("predictions"):
                out.prediction_not_recorded += 1
            if shown is None:
                continue
            pred_xy, pred_labels = _xy_labels(shown, width, height, labels)
            ia, ib = match_points(pred_xy, final_xy, radius_px)
            dist = np.hypot(*(pred_xy[ia] - final_xy[ib]).T) if ia.size else np.zeros(0)
            moved = dist >= MOVED_PX
            use.annotations += 1
            use.predicted += len(pred_xy)
            use.final += len(final_xy)
            use.moved += int(moved.sum())
            use.kept += int(ia.size - moved.sum())
            use.deleted += len(pred_xy) - int(ia.size)
            use.added += len(final_xy) - int(ib.size)
            use.relabeled += sum(pred_labels[a] != final_labels[b] for a, b in zip(ia.tolist(), ib.tolist(),
                                                                                   strict=True))
            use.moved_px.extend(dist[moved].tolist())
        out.skipped += skipped
        if done:
            out.annotated_tasks += 1
        elif skipped:
            out.skipped_tasks += 1
    return out
