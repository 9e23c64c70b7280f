"""Stage predict on a whole slide (a generated pyramidal TIFF of dark disks): tiles streamed with overlap, one
QuPath GeoJSON of detections in level-0 px, per-tile instances, table rows with slide coordinates; bad slides in
one line."""

import json

import numpy as np
import pytest
import tifffile
import yaml
from students import save_random_student
from typer.testing import CliRunner

from flows.cli import app
from nucleate.config import SlidesParams
from nucleate.io import content_id, read_table, table_metadata, write_image
from nucleate.slides import core_box, open_slide, slide_to_tile, tile_grid, tissue_mask
from tests.core.test_slides import write_slide
from tests.core.test_slides_stitch import MPP, disk_centres, disks

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SLIDES = {"target_mpp": 0.5, "tile_px": 128, "tissue_threshold": 0.1, "min_object_um2": 100.0,
          "min_hole_um2": 100.0, "predict_overlap_px": 32}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_random_student(tmp_path_factory.mktemp("model") / "model", nucleus_radius_px=6.0, round=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("wsi")
    (root / "slides").mkdir()
    write_slide(root / "slides" / "disks.tif", disks(disk_centres()), MPP)
    write_image(root / "slides" / "plain.png", np.full((40, 50, 3), 200, np.uint8))  # a plain image beside it
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"labels": ["nucleus"], "slides": SLIDES,
                                      "predict": {"window_px": 64, "device": "cpu"}}))
    return root


def _cli(*args):
    return CliRunner().invoke(app, ["predict", *map(str, args)])


def test_a_slide_folder_gives_qupath_detections_tile_instances_and_slide_points(model_dir, data, tmp_path):
    out = tmp_path / "pred"
    result = _cli("--params", data / "params.yaml", "--model", model_dir, "--images", data / "slides", "--out", out)
    assert result.exit_code == 0, result.output
    assert "predict: 1 images, 1 slides (12 tiles)" in result.output
    slide_file = data / "slides" / "disks.tif"
    points = read_table("predicted_points", out / "points.parquet")
    rows = points.filter(np.array([s is not None for s in points.column("slide_id").to_pylist()])).to_pylist()
    assert len(rows) > 0 and points.num_rows > len(rows)  # the plain image's rows: null slide columns
    assert {r["slide_id"] for r in rows} == {content_id(slide_file)}
    with open_slide(slide_file, slide_id=content_id(slide_file)) as slide:  # the tiles ingest puts in the pool
        params = SlidesParams(**SLIDES)
        tiles = {t.image_id: t for t in tile_grid(slide, tissue_mask(slide, params), params)}
    assert len(tiles) == 12
    per_tile: dict[str, int] = {}
    for r in rows:  # each nucleus in the core of its tile; x, y its tile px
        tile = tiles[r["image_id"]]
        x0, y0, x1, y1 = core_box(tile)
        assert x0 <= r["slide_x"] < x1 and y0 <= r["slide_y"] < y1
        assert np.allclose(slide_to_tile(tile, [[r["slide_x"], r["slide_y"]]]), [[r["x"], r["y"]]])
        per_tile[r["image_id"]] = per_tile.get(r["image_id"], 0) + 1
    tifs = sorted((out / "disks").glob("*.tif"))
    assert sorted(p.stem for p in tifs) == sorted(tiles)  # every tile, even one without nuclei
    for path in tifs:
        labels = tifffile.imread(path)
        assert labels.dtype == np.int32 and labels.shape == (128, 128)
        # instance k + 1 = the tile's row k; a (random-weight) blob whose centre is in the tile but none of its
        # pixels is absent from the tile's file
        assert set(np.unique(labels)) - {0} <= set(range(1, per_tile.get(path.stem, 0) + 1))
    doc = json.loads((out / "disks.geojson").read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == len(rows)
    for feature, r in zip(doc["features"], rows, strict=True):  # same order as the table's slide rows
        props = feature["properties"]
        assert props["objectType"] == "detection" and props["classification"]["name"] == "nucleus"
        assert 0 <= props["measurements"]["score"] <= 1 and props["nucleate"]["tile"] == r["image_id"]
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert feature["geometry"]["type"] == "Polygon" and (ring[0] == ring[-1]).all() and len(ring) >= 4
        assert abs(props["nucleate"]["x"] - r["slide_x"]) < 0.01 and abs(props["nucleate"]["y"] - r["slide_y"]) < 0.01
        lo, hi = ring.min(axis=0), ring.max(axis=0)
        assert (lo - 1 <= [r["slide_x"], r["slide_y"]]).all() and ([r["slide_x"], r["slide_y"]] <= hi + 1).all()
    assert len({f["id"] for f in doc["features"]}) == len(rows)
    meta = table_metadata(points)
    assert meta["slides"][0]["tiles"] == 12 and meta["slides"][0]["margin_px"] == 16
    assert meta["slides_params"]["predict_overlap_px"] == 32


def test_bad_slides_give_one_line_and_write_nothing(model_dir, data, tmp_path):
    good = (data / "slides" / "disks.tif").read_bytes()
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(good[: len(good) // 2])
    bare = write_slide(tmp_path / "bare.tif", disks(disk_centres()), None)
    mrxs = tmp_path / "x.mrxs"
    mrxs.write_bytes(b"[GENERAL]\n")
    out = tmp_path / "out"
    for path, says in ((truncated, "truncated"), (bare, "no resolution metadata"), (mrxs, "unsupported slide format")):
        result = _cli("--params", data / "params.yaml", "--model", model_dir, "--images", path, "--out", out)
        errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
        assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
        assert str(path) in errors[0] and says in errors[0] and "nothing written" in errors[0], errors[0]
        assert not out.exists()
    result = _cli("--params", data / "params.yaml", "--model", model_dir, "--images", data / "slides" / "plain.png",
                  "--out", out)
    assert result.exit_code == 1 and "plain.png: not a whole-slide image" in result.output and not out.exists()
