"""QuPath GeoJSON / COCO keypoints / CSV conversions, display renditions and the simulated annotator."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from nucleate.annotations.display import display_uint8
from nucleate.annotations.formats import (
    _colours,
    from_coco,
    from_csv,
    from_qupath,
    from_qupath_slides,
    to_coco,
    to_qupath,
    to_qupath_slides,
)
from nucleate.annotations.points import points_table
from nucleate.annotations.simulate import simulate_clicks
from nucleate.io import SCHEMAS, validate_table
from nucleate.slides import Tile, tile_to_slide

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


# --- whole slides: QuPath GeoJSON in level-0 px, points on tiles --------------------------------------------

SLIDE = "s" * 64  # a slide's content id
W0 = 64 * 0.5 / 0.3  # level-0 extent of a 64 px tile at 0.5 µm/px on a 0.3 µm/px slide: 106.67 px


def slide_tiles(slide_id: str = SLIDE, drop: tuple[int, int] | None = (2, 1)) -> dict[str, Tile]:
    """A 3 x 2 grid laid as tile_grid lays it (x0 = round(k * W0): sub-pixel gaps and overlaps between
    neighbours), minus the tile ``drop`` (column, row) = not kept; image_id -> Tile."""
    tiles = [Tile(slide_id, round(c * W0), round(r * W0), W0, W0, 64, 0.5, 0, 0.9)
             for r in range(2) for c in range(3) if (c, r) != drop]
    return {t.image_id: t for t in tiles}


def slide_points(tiles: dict[str, Tile]) -> pa.Table:
    """Points on the tiles (edges, interior, the overlap of two tiles), half with slide_x / slide_y set."""
    by_xy = {(t.x0, t.y0): i for i, t in tiles.items()}
    t0, t1, t2 = by_xy[(0, 0)], by_xy[(107, 0)], by_xy[(213, 0)]
    rows = [(t0, 0.0, 0.0, "nucleus", "ann1", 3, 30, 1, "manual"),
            (t0, 64.0, 64.0, "nucleus", "ann1", 3, 30, 1, "manual"),       # far corner: closed edge, gap beyond
            (t0, 10.5, 20.25, "micronucleus", "ann2", None, None, 2, "prediction"),
            (t2, 0.1, 5.0, "nucleus", "ann2", None, None, 2, "manual"),    # in t1 and t2 (they overlap)
            (t1, 63.9, 33.0, "nucleus", "ann1", 4, 40, 1, "ground_truth")]
    names = ["image_id", "x", "y", "label", "annotator", "task_id", "annotation_id", "round", "origin"]
    cols = {n: [r[i] for r in rows] for i, n in enumerate(names)}
    cols["created_at"] = [datetime(2025, 3, 4, 5, 6, 7, 123000 + i, tzinfo=UTC) for i in range(len(rows))]
    xy = np.vstack([tile_to_slide(tiles[r[0]], [r[1], r[2]]) for r in rows])
    cols["slide_id"] = [SLIDE] * len(rows)
    cols["slide_x"] = [float(v) if i % 2 else None for i, v in enumerate(xy[:, 0])]
    cols["slide_y"] = [float(v) if i % 2 else None for i, v in enumerate(xy[:, 1])]
    return points_table(cols)


#: QuPath's GeoJSON for points made with its Points tool (File > Export objects as GeoJSON; qupath-docs
#: "Exporting annotations"): a FeatureCollection of annotations, one MultiPoint per class, pixel units
QUPATH_POINTS_SCHEMA = {
    "type": "object",
    "required": ["type", "features"],
    "properties": {
        "type": {"const": "FeatureCollection"},
        "features": {"type": "array", "items": {
            "type": "object",
            "required": ["type", "id", "geometry", "properties"],
            "properties": {
                "type": {"const": "Feature"},
                "id": {"type": "string", "format": "uuid"},
                "geometry": {
                    "type": "object", "required": ["type", "coordinates"], "additionalProperties": False,
                    "properties": {
                        "type": {"const": "MultiPoint"},
                        "coordinates": {"type": "array", "minItems": 1, "items": {
                            "type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "number"}}},
                    },
                },
                "properties": {
                    "type": "object", "required": ["objectType", "classification"],
                    "properties": {
                        "objectType": {"const": "annotation"},
                        "isLocked": {"type": "boolean"},
                        "classification": {
                            "type": "object", "required": ["name", "color"],
                            "properties": {"name": {"type": "string"}, "color": {
                                "type": "array", "minItems": 3, "maxItems": 3,
                                "items": {"type": "integer", "minimum": 0, "maximum": 255}}},
                        },
                    },
                },
            },
        }},
    },
}


def test_qupath_slide_export_is_qupath_points_geojson_in_level0_px():
    import jsonschema

    tiles = slide_tiles()
    table = slide_points(tiles)
    docs = json.loads(json.dumps(to_qupath_slides(table, tiles, LABELS)))
    assert list(docs) == [SLIDE]
    doc = docs[SLIDE]
    jsonschema.validate(doc, QUPATH_POINTS_SCHEMA)
    bad = json.loads(json.dumps(doc))
    bad["features"][0]["properties"]["classification"]["color"] = [1.5, 0, 0]
    with pytest.raises(jsonschema.ValidationError):  # the schema does check
        jsonschema.validate(bad, QUPATH_POINTS_SCHEMA)
    assert [f["properties"]["classification"]["name"] for f in doc["features"]] == LABELS  # one per class
    for f in doc["features"]:
        assert all(isinstance(v, float) for p in f["geometry"]["coordinates"] for v in p)
        assert f["properties"]["classification"]["color"] == _colours(LABELS)[f["properties"]["classification"]
                                                                                ["name"]]
    nuclei = np.array(doc["features"][0]["geometry"]["coordinates"])
    np.testing.assert_allclose(nuclei[:2], [[0, 0], [W0, W0]], atol=1e-9)            # level-0 px, no offset
    np.testing.assert_allclose(nuclei[2], [213 + 0.1 * W0 / 64, 5 * W0 / 64], atol=1e-9)


def test_qupath_slide_round_trip_keeps_tiles_points_and_columns():
    tiles = slide_tiles()
    table = slide_points(tiles)
    doc = json.loads(json.dumps(to_qupath_slides(table, tiles, LABELS)[SLIDE]))
    back = from_qupath_slides([("case.geojson", SLIDE, doc)], tiles=tiles, labels=LABELS)
    assert back.rejected == [] and back.n_rejected == 0
    key = ["image_id", "label", "annotator", "task_id", "annotation_id", "round", "origin", "created_at"]
    want = sorted(table.to_pylist(), key=lambda r: r["created_at"])
    got = sorted(back.points.to_pylist(), key=lambda r: r["created_at"])
    assert [[r[k] for k in key] for r in got] == [[r[k] for k in key] for r in want]
    for name in ("x", "y"):
        np.testing.assert_allclose([r[name] for r in got], [r[name] for r in want], rtol=0, atol=1e-6)
    slide_xy = np.vstack([tile_to_slide(tiles[r["image_id"]], [r["x"], r["y"]]) for r in want])
    np.testing.assert_allclose([(r["slide_x"], r["slide_y"]) for r in got], slide_xy, rtol=0, atol=1e-9)
    assert {r["slide_id"] for r in got} == {SLIDE}


def test_qupath_points_made_on_a_slide_go_to_the_tile_holding_them():
    tiles = slide_tiles()
    by_xy = {(t.x0, t.y0): i for i, t in tiles.items()}
    made = [  # QuPath's bare list of features (exportObjectsToGeoJson without FEATURE_COLLECTION)
        {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [
            [50, 60], [106.8, 50], [250, 150], [213.3, 10], [320, 5]]},
         "properties": {"objectType": "annotation", "classification": {"name": "nucleus", "color": [1, 2, 3]}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [20.5, 150.25]},
         "properties": {"objectType": "annotation"}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
         "properties": {}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [float("nan"), 3]}, "properties": {}},
    ]
    res = from_qupath_slides([("case.geojson", SLIDE, made)], tiles=tiles, labels=LABELS,
                             default_label="micronucleus")
    got = [(r["image_id"], r["label"], r["slide_x"], r["slide_y"]) for r in res.points.to_pylist()]
    assert got == [(by_xy[(0, 0)], "nucleus", 50.0, 60.0),
                   (by_xy[(107, 0)], "nucleus", 213.3, 10.0),  # on t1 and t2: the first, row-major
                   (by_xy[(0, 107)], "micronucleus", 20.5, 150.25)]
    np.testing.assert_allclose([(r["x"], r["y"]) for r in res.points.to_pylist()],
                               [(50 * 64 / W0, 60 * 64 / W0), ((213.3 - 107) * 64 / W0, 10 * 64 / W0),
                                (20.5 * 64 / W0, (150.25 - 107) * 64 / W0)], atol=1e-9)
    assert res.n_rejected == 5 and len(res.rejected) == 3
    assert "Polygon" in res.rejected[0] and "feature 3: coordinates are not finite" in res.rejected[1]
    # the sub-pixel gap between two tiles, the tile that was not kept, past the slide's last tile: one line
    assert res.rejected[2].startswith("case.geojson: 3 point(s) lie on no kept tile") and "(106.8, 50.0)" in \
        res.rejected[2]
    other = from_qupath_slides([("other.geojson", "o" * 64, made[:1])], tiles=tiles, labels=LABELS)
    assert other.points.num_rows == 0 and other.n_rejected == 5  # a slide without kept tiles
