"""Label Studio keypoint percentages <-> pixel points, export parsing, progress (pure, no server)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nucleate.annotations.labelstudio import (
    collect_points,
    keypoint_points,
    keypoint_results,
    labeling_config,
    prediction_points,
    task_finished,
    task_progress,
)

LABELS = ["nucleus", "micronucleus"]


def test_labeling_config_has_one_keypoint_label_per_class_in_order():
    root = ET.fromstring(labeling_config(["nucleus", 'odd "name" <&>', "background"]))
    image = root.find("Image")
    kp = root.find("KeyPointLabels")
    assert image.get("name") == "image" and image.get("value") == "$image"
    assert root.find("Header").get("value") == "$name"  # the annotator sees which image (or slide tile) it is
    assert kp.get("name") == "kp" and kp.get("toName") == "image"
    assert [lbl.get("value") for lbl in kp.findall("Label")] == ["nucleus", 'odd "name" <&>', "background"]


@pytest.mark.parametrize("labels", [[], ["a", "a"]])
def test_labeling_config_rejects_empty_or_duplicate_labels(labels):
    with pytest.raises(ValueError, match="params: labels"):
        labeling_config(labels)


@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(1, 5000),
    height=st.integers(1, 5000),
    fractions=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=0, max_size=30),
)
def test_pixels_to_percent_and_back_is_exact(width, height, fractions):
    xy = np.asarray(fractions, np.float64).reshape(-1, 2) * [width, height]
    labels = [LABELS[i % 2] for i in range(len(xy))]
    results = keypoint_results(xy, labels, width, height)
    kept, rejected = keypoint_points(results, width=width, height=height, labels=LABELS)
    assert rejected == []
    back = np.asarray([(x, y) for x, y, _, _ in kept]).reshape(-1, 2)
    np.testing.assert_allclose(back, xy, rtol=0, atol=1e-9)
    assert [lbl for _, _, lbl, _ in kept] == labels


def test_percentages_are_relative_to_the_corner_origin_of_a_non_square_image():
    # centre of pixel [row 2, col 5] of a 320 x 240 image
    (r,) = keypoint_results(np.array([[5.5, 2.5]]), ["nucleus"], 320, 240)
    assert r["value"]["x"] == pytest.approx(100 * 5.5 / 320)
    assert r["value"]["y"] == pytest.approx(100 * 2.5 / 240)
    assert (r["original_width"], r["original_height"]) == (320, 240)
    # a displayed (scaled) image gives the same percentages: convert back with the true size
    kept, _ = keypoint_points([{**r, "original_width": 160, "original_height": 120}], width=320, height=240)
    assert kept[0][:2] == pytest.approx((5.5, 2.5))


def test_bad_points_are_rejected_one_by_one_and_the_rest_kept():
    good = keypoint_results(np.array([[10.0, 10.0], [0.0, 240.0]]), ["nucleus", "micronucleus"], 320, 240)
    outside = keypoint_results(np.array([[321.0, 5.0]]), ["nucleus"], 320, 240)
    unknown = keypoint_results(np.array([[5.0, 5.0]]), ["tumor"], 320, 240)
    two_labels = [{**good[0], "value": {**good[0]["value"], "keypointlabels": ["nucleus", "micronucleus"]}}]
    rect = [{"type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 2, "height": 2}}]
    kept, rejected = keypoint_points(good + outside + unknown + two_labels + rect, width=320, height=240,
                                     labels=LABELS)
    assert [lbl for _, _, lbl, _ in kept] == ["nucleus", "micronucleus"]
    np.testing.assert_allclose([k[:2] for k in kept], [(10.0, 10.0), (0.0, 240.0)], atol=1e-9)
    reasons = [r[3] for r in rejected]
    assert len(reasons) == 4
    assert "outside the image" in reasons[0] and "320 x 240" in reasons[0]
    assert "unknown label 'tumor'" in reasons[1]
    assert "several labels" in reasons[2]
    assert "not a keypoint" in reasons[3]


def test_origin_prediction_only_when_the_pre_annotation_was_kept_unchanged():
    base = keypoint_results(np.array([[1.0, 1.0]] * 3), ["nucleus"] * 3, 10, 10)
    base[0]["origin"] = "prediction"
    base[1]["origin"] = "prediction-changed"
    kept, _ = keypoint_points(base, width=10, height=10)
    assert [k[3] for k in kept] == ["prediction", "manual", "manual"]


def _task(tid, image_id, annotations, round=1, w=300, h=200):
    return {"id": tid, "data": {"image_id": image_id, "round": round, "width": w, "height": h},
            "annotations": annotations}


def _ann(aid, user, xy, labels=None, updated="2025-01-01T00:00:00Z", cancelled=False, w=300, h=200):
    labels = labels or ["nucleus"] * len(xy)
    return {"id": aid, "completed_by": user, "was_cancelled": cancelled, "updated_at": updated,
            "created_at": updated, "result": keypoint_results(np.asarray(xy, float), labels, w, h)}


def test_collect_points_latest_annotation_per_annotator_cancelled_counted_missing_reported():
    tasks = [
        _task(1, "img-a", [
            _ann(10, 1, [(1.5, 2.5)], updated="2025-01-01T00:00:00Z"),
            _ann(11, 1, [(3.0, 4.0), (5.0, 6.0)], updated="2025-01-02T00:00:00Z"),  # same user, later: wins
            _ann(12, 2, [(3.2, 4.1), (400.0, 1.0)]),                                  # second point outside
        ]),
        _task(2, "img-b", [_ann(13, 1, [], cancelled=True)]),
        _task(3, "img-c", []),
        _task(4, "img-d", [_ann(14, 1, [(7.0, 7.0)])], round=2),
    ]
    res = collect_points(tasks, labels=LABELS, users={1: "ann1@x.org", 2: "ann2@x.org"}, rounds=[1],
                         expected_image_ids=["img-a", "img-b", "img-c", "img-gone"])
    s = res.summary()
    assert s == {"tasks": 3, "annotated_tasks": 1, "skipped_tasks": 1, "annotations": 4, "cancelled_annotations": 1,
                 "superseded_annotations": 1, "points": 3, "rejected_points": 1, "deleted_tasks": 1}
    rows = res.points.to_pylist()
    assert [(r["annotator"], r["annotation_id"], r["x"], r["y"]) for r in rows] == [
        ("ann1@x.org", 11, 3.0, 4.0), ("ann1@x.org", 11, 5.0, 6.0), ("ann2@x.org", 12, 3.2, 4.1)]
    assert {r["task_id"] for r in rows} == {1} and {r["round"] for r in rows} == {1}
    assert res.missing_image_ids == ["img-gone"]
    assert res.annotators["img-a"] == ["ann1@x.org", "ann2@x.org"]
    line = res.rejected[0].line()
    assert "img-a" in line and "annotation 12" in line and "outside the image" in line


def test_task_progress_counts_skipped_as_finished():
    tasks = [{"total_annotations": 1, "cancelled_annotations": 0}, {"total_annotations": 0, "cancelled_annotations": 1},
             {"total_annotations": 0, "cancelled_annotations": 0}, {"total_annotations": 2, "cancelled_annotations": 1}]
    assert task_progress(tasks) == {"total": 4, "finished": 3, "annotated": 2, "skipped": 1, "open": 1}


def test_task_finished_reads_counters_or_annotations():
    assert task_finished({"total_annotations": 0, "cancelled_annotations": 1})
    assert not task_finished({"total_annotations": 0, "cancelled_annotations": 0, "annotations": [{"id": 1}]})
    assert task_finished({"annotations": [{"id": 1, "was_cancelled": True}]})
    assert not task_finished({"annotations": []})


def test_predictions_outside_the_image_or_with_unknown_labels_are_left_out_one_line_each():
    table = pa.table({"image_id": ["img", "img", "img", "other", "img"], "x": [1.0, 101.0, 3.0, 1.0, 4.0],
                      "y": [1.0, 1.0, 3.0, 1.0, 5.0], "label": ["nucleus", "nucleus", "blob", "nucleus", "nucleus"],
                      "score": [0.9, 0.8, 0.7, 0.6, None]})
    grouped, rejected = prediction_points(table, {"img": (100, 50)}, LABELS)
    assert list(grouped) == ["img"]
    assert grouped["img"]["xy"].tolist() == [[1.0, 1.0], [4.0, 5.0]] and grouped["img"]["score"] == [0.9, 1.0]
    assert len(rejected) == 2
    assert "row 1" in rejected[0] and "outside the image" in rejected[0]
    assert "row 2" in rejected[1] and "unknown label 'blob'" in rejected[1]


def test_the_label_studio_config_offers_the_point_labels_not_the_teachers_classes():
    from nucleate.config import Params

    p = Params()
    offered = [lbl.get("value") for lbl in ET.fromstring(labeling_config(p.labels)).iter("Label")]
    assert offered == list(p.labels)
    assert "background" in p.teacher.classes and "background" not in offered
