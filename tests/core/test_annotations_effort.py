"""nucleate.annotations.effort: annotation cost and pre-annotation use from a constructed Label Studio export."""

from __future__ import annotations

import numpy as np
import pytest

from nucleate.annotations import keypoint_results
from nucleate.annotations.effort import MOVED_PX, round_effort

W, H = 100, 50


def _kp(xy, labels=None):
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    return keypoint_results(xy, labels or ["nucleus"] * len(xy), W, H)


def _task(tid, anns=(), predictions=()):
    return {"id": tid, "data": {"image_id": f"img{tid}", "width": W, "height": H, "round": 1},
            "annotations": list(anns), "predictions": list(predictions)}


def _ann(aid, result, lead_time, prediction=None, cancelled=False):
    return {"id": aid, "result": result, "lead_time": lead_time, "was_cancelled": cancelled,
            "prediction": {} if prediction is None else {"id": 1, "model_version": "r0", "result": prediction}}


PRED = [(10, 10), (20, 20), (30, 30), (40, 40), (60, 10)]
FINAL = [(10, 10),      # kept, relabeled
         (20.2, 20),    # kept (0.2 px < 0.5)
         (31, 30),      # moved 1.0 px
         # (40, 40) deleted
         (67, 10),      # 7 px from (60, 10): outside the 6 px radius -> (60, 10) deleted, this one added
         (80, 5)]       # added


def _export():
    final = _kp(FINAL, ["micronucleus", "nucleus", "nucleus", "nucleus", "nucleus"])
    final += _kp([(150, 5)])                                    # outside the image: left out on both sides
    return [
        _task(1, [_ann(11, final, 20.0, prediction=_kp(PRED))], predictions=[1]),
        _task(2, [_ann(21, _kp([(5, 5), (6, 40)]), 12.0)]),
        _task(3, [_ann(31, [], 6.0, cancelled=True)]),           # skipped
        _task(4),                                                # open
        _task(5, [_ann(51, _kp([(50, 25)]), None)], predictions=[9]),  # prediction not recorded, no lead time
    ]


def test_counts_cost_and_preannotation_use_exactly():
    e = round_effort(_export(), radius_px=6.0, labels=("nucleus", "micronucleus"))
    d = e.as_dict()
    assert (d["tasks"], d["annotated_tasks"], d["skipped_tasks"], d["open_tasks"]) == (5, 3, 1, 1)
    assert (d["annotations"], d["skipped_annotations"], d["untimed_annotations"], d["points"]) == (3, 1, 1, 8)
    assert e.seconds == pytest.approx(38.0) and d["annotator_minutes"] == round(38 / 60, 2)
    assert d["skipped_minutes"] == 0.1
    assert d["seconds_per_image"] == {"mean": 16.0, "median": 16.0}          # 20 and 12 s (untimed left out)
    assert d["seconds_per_click"] == {"mean": 5.0, "median": 5.0, "pooled": round(32 / 7, 2)}  # 20/5, 12/2
    p = d["preannotations"]
    assert p["prediction_not_recorded"] == 1 and p["moved_px"] == MOVED_PX
    assert {k: p[k] for k in ("annotations", "predicted", "final", "matched", "kept", "moved", "deleted", "added",
                              "relabeled")} == {"annotations": 1, "predicted": 5, "final": 5, "matched": 3,
                                                "kept": 2, "moved": 1, "deleted": 2, "added": 2, "relabeled": 1}
    assert p["kept_fraction"] == 0.4 and p["median_move_px"] == 1.0
    assert e.preannotations.matched == e.preannotations.kept + e.preannotations.moved


def test_labels_filter_points_and_radius_decides_matching():
    e = round_effort(_export(), radius_px=8.0, labels=("nucleus",))         # micronucleus point left out
    p = e.preannotations.as_dict()
    # (10, 10) is gone from the final points: its prediction is deleted; (67, 10) now matches (60, 10), moved 7 px
    assert (p["kept"], p["moved"], p["deleted"], p["added"], p["relabeled"]) == (1, 2, 2, 1, 0)
    assert e.points == 7 and sorted(e.preannotations.moved_px) == pytest.approx([1.0, 7.0])


def test_expanded_task_predictions_are_used_when_the_annotation_recorded_none():
    pred = {"id": 4, "result": _kp(PRED[:2])}
    older = {"id": 3, "result": _kp(PRED)}
    task = _task(1, [_ann(11, _kp([(10, 10)]), 3.0)], predictions=[older, pred])
    use = round_effort([task], radius_px=6.0).preannotations                   # the latest prediction (id 4)
    assert (use.annotations, use.predicted, use.kept, use.deleted, use.added) == (1, 2, 1, 1, 0)


def test_every_annotation_of_a_task_counts_and_bad_lead_times_are_untimed():
    anns = [{**_ann(1, _kp([(1, 1)]), 4.0), "completed_by": 1},
            {**_ann(2, _kp([(1, 1), (2, 2)]), "n/a"), "completed_by": 2},
            {**_ann(3, [], -1.0, cancelled=True), "completed_by": 3}]
    e = round_effort([_task(1, anns)], radius_px=6.0)
    assert (len(e.finished), e.skipped, e.untimed, e.annotated_tasks, e.skipped_tasks) == (2, 1, 2, 1, 0)
    assert e.seconds == 4.0 and e.preannotations.annotations == 0
    assert [a.seconds for a in e.finished] == [4.0, None]


def test_empty_export():
    d = round_effort([], radius_px=6.0).as_dict()
    assert d["tasks"] == 0 and d["annotator_minutes"] == 0.0
    assert d["seconds_per_image"] == {"mean": None, "median": None}
    assert d["seconds_per_click"]["pooled"] is None and d["preannotations"]["kept_fraction"] is None
