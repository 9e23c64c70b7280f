"""QuPath GeoJSON / COCO keypoints / CSV conversions, display renditions and the simulated annotator."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from nucleate.annotations.display import display_uint8
from nucleate.annotations.formats import from_coco, from_csv, from_qupath, to_coco, to_qupath
from nucleate.annotations.simulate import simulate_clicks
from nucleate.io import SCHEMAS, validate_table

LABELS = ["nucleus", "micronucleus"]
SIZES = {"img-a": (320, 240), "img-b": (64, 100)}


def _points():
    rows = [
        ("img-a", 0.5, 0.5, "nucleus", "ann1", 7, 70, 1, "manual"),
        ("img-a", 319.25, 12.125, "micronucleus", "ann1", 7, 70, 1, "prediction"),
        ("img-b", 10.0, 99.75, "nucleus", "ann2", None, None, 0, "ground_truth"),
    ]
    names = ["image_id", "x", "y", "label", "annotator", "task_id", "annotation_id", "round", "origin"]
    cols = {n: [r[i] for r in rows] for i, n in enumerate(names)}
    cols["created_at"] = [datetime(2025, 3, 4, 5, 6, 7, 123000, tzinfo=UTC)] * len(rows)
    return validate_table("points", pa.table({k: pa.array(v, type=SCHEMAS["points"].field(k).type)
                                              for k, v in cols.items()}))


def test_qupath_geojson_round_trip_is_equal():
    table = _points()
    docs = to_qupath(table, LABELS)
    assert set(docs) == {"img-a", "img-b"}
    feat = docs["img-a"]["features"][1]
    assert feat["geometry"] == {"type": "Point", "coordinates": [319.25, 12.125]}  # pixels, no offset
    assert feat["properties"]["classification"]["name"] == "micronucleus"
    back = from_qupath([(f"{k}.geojson", k, json.loads(json.dumps(d))) for k, d in docs.items()],
                       sizes=SIZES, labels=LABELS)
    assert back.rejected == []
    assert back.points.to_pylist() == table.to_pylist()


def test_qupath_import_of_multipoint_unclassified_and_bad_features():
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[1, 2], [3, 4], [400, 4]]},
         "properties": {"classification": {"name": "nucleus"}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 6]}, "properties": {}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
         "properties": {}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 6]},
         "properties": {"classification": {"name": "Tumor"}}},
    ]}
    res = from_qupath([("a.geojson", "img-a", doc)], sizes=SIZES, labels=LABELS, default_label="micronucleus",
                      annotator="qp")
    assert [(r["x"], r["y"], r["label"], r["annotator"]) for r in res.points.to_pylist()] == [
        (1.0, 2.0, "nucleus", "qp"), (3.0, 4.0, "nucleus", "qp"), (5.0, 6.0, "micronucleus", "qp")]
    assert len(res.rejected) == 3
    assert "feature 0 point 2" in res.rejected[0] and "outside the image" in res.rejected[0]
    assert "Polygon" in res.rejected[1]
    assert "unknown label 'Tumor'" in res.rejected[2]


def test_coco_keypoints_round_trip_and_pixel_index_convention():
    table = _points()
    images = [{"image_id": k, "file_name": f"pool/{k}.tif", "width": w, "height": h} for k, (w, h) in SIZES.items()]
    doc = json.loads(json.dumps(to_coco(table, images, LABELS)))
    assert [c["name"] for c in doc["categories"]] == LABELS
    assert doc["annotations"][0]["keypoints"] == [0.0, 0.0, 2]   # centre of pixel [0, 0] is index (0, 0)
    back = from_coco(doc, labels=LABELS)
    assert back.rejected == []
    assert back.points.to_pylist() == table.to_pylist()
    # a foreign COCO file (no nucleate fields), matched by file name
    for a in doc["annotations"]:
        del a["nucleate"]
    for im in doc["images"]:
        del im["nucleate_image_id"]
    foreign = from_coco(doc, sizes=SIZES, names={"img-a.tif": "img-a", "img-b.tif": "img-b"}, labels=LABELS)
    assert foreign.points.column("x").to_pylist() == table.column("x").to_pylist()
    assert set(foreign.points.column("annotator").to_pylist()) == {"coco"}


def test_csv_import_xy_and_row_col_with_rejections():
    text = "image,x,y,label\nimg-a.tif,1.5,2.5,\nimg-a.tif,1000,2,nucleus\nmissing.tif,1,1,nucleus\n" \
           "img-b.tif,abc,2,nucleus\n"
    res = from_csv(text, source="pts.csv", sizes=SIZES, names={"img-a.tif": "img-a", "img-b.tif": "img-b"},
                   labels=LABELS, default_label="nucleus")
    assert [(r["image_id"], r["x"], r["y"], r["label"]) for r in res.points.to_pylist()] == [
        ("img-a", 1.5, 2.5, "nucleus")]
    assert [line.split(":")[1].strip() for line in res.rejected] == ["line 3", "line 4", "line 5"]
    rc = from_csv("image_id,row,col,annotator\nimg-b,3,4,bob\n", source="rc.csv", sizes=SIZES, labels=LABELS,
                  default_label="nucleus")
    assert [(r["x"], r["y"], r["annotator"]) for r in rc.points.to_pylist()] == [(4.5, 3.5, "bob")]
    with pytest.raises(ValueError, match="x,y .* or row,col"):
        from_csv("image_id,a,b\n", source="bad.csv", sizes=SIZES, labels=LABELS)


def test_display_uint8_keeps_size_and_stretches_16_bit():
    img16 = np.zeros((5, 7), np.uint16)
    img16[2, 3] = 4000
    img16[0, 0] = 100
    out = display_uint8(img16, 0, 100)
    assert out.shape == (5, 7) and out.dtype == np.uint8
    assert out[2, 3] == 255 and out[1, 1] == 0 and out[0, 0] == round(100 * 255 / 4000)
    rgb = np.arange(4 * 6 * 4, dtype=np.uint8).reshape(4, 6, 4)
    assert display_uint8(rgb).shape == (4, 6, 3)
    assert display_uint8(np.full((3, 3), 7.0)).max() == 0


def test_simulated_annotator_exact_without_noise_and_deterministic():
    gt = np.array([[10.0, 10.0], [20.0, 30.0], [5.0, 45.0]])
    labels = ["nucleus"] * 3
    exact = simulate_clicks(gt, labels, 50, 50, np.random.default_rng(0), jitter_px=0, miss_rate=0,
                            false_click_rate=0)
    np.testing.assert_array_equal(exact.xy, gt)
    assert exact.origin == ["manual"] * 3
    a = simulate_clicks(gt, labels, 50, 50, np.random.default_rng(5), jitter_px=1, miss_rate=0.3,
                        false_click_rate=1.0)
    b = simulate_clicks(gt, labels, 50, 50, np.random.default_rng(5), jitter_px=1, miss_rate=0.3,
                        false_click_rate=1.0)
    np.testing.assert_array_equal(a.xy, b.xy)
    assert len(a.xy) == 3 - a.missed + a.false_clicks
    assert ((a.xy >= 0) & (a.xy <= 50)).all()


def test_simulated_annotator_accepts_predictions_on_true_nuclei():
    gt = np.array([[10.0, 10.0], [30.0, 30.0]])
    pred = np.array([[11.0, 10.5], [45.0, 5.0]])          # one on a nucleus, one false
    out = simulate_clicks(gt, ["nucleus"] * 2, 50, 50, np.random.default_rng(1), jitter_px=0, miss_rate=0,
                          false_click_rate=0, predictions_xy=pred, prediction_labels=["nucleus"] * 2,
                          accept_radius_px=3)
    assert out.origin == ["prediction", "manual"]
    np.testing.assert_array_equal(out.xy, [[11.0, 10.5], [30.0, 30.0]])


def test_statistics_of_the_simulated_annotator_follow_its_rates():
    rng = np.random.default_rng(3)
    gt = rng.uniform(0, 1000, (20000, 2))
    out = simulate_clicks(gt, ["nucleus"] * len(gt), 1000, 1000, rng, jitter_px=2.0, miss_rate=0.1,
                          false_click_rate=0.05)
    assert out.missed / len(gt) == pytest.approx(0.1, abs=0.01)
    assert out.false_clicks / len(gt) == pytest.approx(0.05, abs=0.01)
