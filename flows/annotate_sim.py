"""``nucleate annotate-sim``: a simulated annotator that works through Label Studio tasks via the API.

For every task of the round whose image has ground truth (a points table, e.g. the sample data's
``points.parquet``) and that this annotator has not annotated yet, it posts one annotation as that
user: the ground-truth centres with Gaussian jitter, a miss rate and false clicks
(``labelstudio.sim_*`` params), keeping pre-annotations that sit on a true nucleus (origin
``prediction``) as a person accepting them would. Running it again annotates only what is left.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from flows.ls_client import Adapter
from nucleate.annotations.labelstudio import keypoint_points, keypoint_results
from nucleate.annotations.points import points_xy, rows_by_image
from nucleate.annotations.simulate import simulate_clicks
from nucleate.config import LabelStudioParams

__all__ = ["SimReport", "annotate_sim"]


@dataclass
class SimReport:
    annotator: str
    annotated: dict[str, int] = field(default_factory=dict)  # image_id -> annotation id
    already_done: int = 0
    no_ground_truth: list[str] = field(default_factory=list)
    clicks: int = 0
    accepted_predictions: int = 0
    missed: int = 0
    false_clicks: int = 0

    def line(self) -> str:
        return (f"annotate-sim {self.annotator}: {len(self.annotated)} task(s) annotated ({self.clicks} clicks, "
                f"{self.accepted_predictions} pre-annotations kept, {self.missed} nuclei missed, "
                f"{self.false_clicks} false clicks); {self.already_done} already done; "
                f"{len(self.no_ground_truth)} without ground truth")


def annotate_sim(
    adapter: Adapter,
    project_id: int,
    ground_truth: pa.Table,
    *,
    annotator: str,
    params: LabelStudioParams,
    seed: int = 0,
    rounds: Sequence[int] | None = None,
    limit: int | None = None,
    labels: Sequence[str] | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> SimReport:
    """Annotate (at most ``limit``) open tasks of ``rounds`` as ``annotator`` (an e-mail; the Label Studio
    user is created if missing). ``labels`` (params ``labels``): pre-annotations with other labels are
    ignored, and false clicks get the first label. Randomness: one generator per (``seed``, annotator,
    image_id), so the clicks on an image do not depend on the order or on other images."""
    report = SimReport(annotator)
    user_id = adapter.ensure_user(annotator)
    gt_xy = points_xy(ground_truth)
    gt_label = ground_truth.column("label").to_pylist()
    gt = {image_id: {"xy": gt_xy[rows], "label": [gt_label[i] for i in rows.tolist()]}
          for image_id, rows in rows_by_image(ground_truth).items()}
    wanted = None if rounds is None else {int(r) for r in rounds}
    tasks = [t for t in adapter.tasks(project_id)
             if wanted is None or int(t["data"].get("round", -1)) in wanted]
    annotated_ids = [t["id"] for t in tasks if t["total_annotations"] or t["cancelled_annotations"]]
    done_by = defaultdict(set)
    for t in adapter.export(project_id, annotated_ids):
        for a in t.get("annotations") or []:
            who = a.get("completed_by")
            done_by[t["id"]].add(who.get("id") if isinstance(who, dict) else who)
    for t in sorted(tasks, key=lambda t: t["id"]):
        if limit is not None and len(report.annotated) >= limit:
            break
        data = t["data"]
        image_id = str(data.get("image_id"))
        if user_id in done_by[t["id"]]:
            report.already_done += 1
            continue
        if image_id not in gt:
            report.no_ground_truth.append(image_id)
            continue
        width, height = int(data["width"]), int(data["height"])
        pred_xy, pred_labels = None, None
        preds = adapter.predictions_of(t["id"])
        if preds:
            kept, _ = keypoint_points(preds[-1]["result"] or [], width=width, height=height, labels=labels)
            pred_xy = np.asarray([(x, y) for x, y, _, _ in kept], np.float64).reshape(-1, 2)
            pred_labels = [lbl for _, _, lbl, _ in kept]
        g = gt[image_id]
        rng = np.random.default_rng([seed, zlib.crc32(annotator.encode()), zlib.crc32(image_id.encode())])
        clicks = simulate_clicks(
            g["xy"], g["label"], width, height, rng,
            jitter_px=params.sim_jitter_px, miss_rate=params.sim_miss_rate,
            false_click_rate=params.sim_false_click_rate,
            false_label=(labels[0] if labels else None),
            predictions_xy=pred_xy, prediction_labels=pred_labels, accept_radius_px=params.agreement_radius_px,
        )
        result = keypoint_results(clicks.xy, clicks.labels, width, height, marker_pct=params.point_radius_pct,
                                  origin=clicks.origin)
        lead_time = round(5.0 + 1.5 * len(clicks.xy), 1)
        report.annotated[image_id] = adapter.annotate(t["id"], result, user_id=user_id, lead_time=lead_time)
        report.clicks += len(clicks.xy)
        report.accepted_predictions += clicks.origin.count("prediction")
        report.missed += clicks.missed
        report.false_clicks += clicks.false_clicks
        log(f"annotate-sim {annotator}: task {t['id']} image {image_id}: {len(clicks.xy)} clicks")
    return report

