"""Stage ``points`` on a pool of whole-slide tiles and plain images: slide_id / slide_x / slide_y (level-0 px)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from nucleate.annotations import consensus_table, keypoint_results, points_table
from nucleate.annotations.labelstudio import CollectedPoints
from nucleate.config import LabelStudioParams
from nucleate.io import SLIDE_POINT_FIELDS, TILE_FIELDS, read_table, validate_table, write_table
from nucleate.slides import Tile, slide_points, slide_to_tile, tile_to_slide
from tasks import points as stage

LABELS = ("nucleus", "micronucleus")
# two tiles of one slide (level 1, non-integer level-0 extent) and one of another; one plain image
TILES = {
    "t1": Tile("s" * 32, x0=4003, y0=917, width0=1001.6, height0=1001.6, tile_px=512, mpp=0.5, level=1,
               tissue_fraction=0.7),
    "t2": Tile("s" * 32, x0=5005, y0=917, width0=1001.6, height0=1001.6, tile_px=512, mpp=0.5, level=1,
               tissue_fraction=0.9),
    "t3": Tile("u" * 32, x0=0, y0=2048, width0=256.0, height0=256.0, tile_px=256, mpp=0.25, level=0,
               tissue_fraction=1.0),
}
PLAIN = ("img", 300, 200)
CLICKS = {"t1": [(10.5, 20.25), (400.0, 505.0)], "t2": [(0.0, 0.0), (256.0, 128.5)], "t3": [(250.9, 3.3)],
          "img": [(12.0, 34.0), (299.0, 1.0)]}


def _manifest(tiles=True):
    rows = [{"image_id": k, "path": f"slides/{t.slide_id[0]}.tif", "width": t.tile_px, "height": t.tile_px,
             "channels": 3, "dtype": "uint8", "split": "pool", "bytes": 1, **t.manifest_columns()}
            for k, t in TILES.items()]
    rows.append({"image_id": PLAIN[0], "path": "img.png", "width": PLAIN[1], "height": PLAIN[2], "channels": 3,
                 "dtype": "uint8", "split": "pool", "bytes": 1, **dict.fromkeys(TILE_FIELDS.names)})
    if not tiles:
        rows = [{k: v for k, v in r.items() if k not in TILE_FIELDS.names} for r in rows]
    return pa.Table.from_pylist(rows)


def _size(image_id):
    return (TILES[image_id].tile_px,) * 2 if image_id in TILES else PLAIN[1:]


@pytest.fixture
def tree(tmp_path):
    tasks = []
    for n, (image_id, xy) in enumerate(CLICKS.items()):
        w, h = _size(image_id)
        anns = [{"id": 100 + 10 * n + u, "completed_by": u, "was_cancelled": False,
                 "updated_at": "2025-03-01T10:00:00Z", "created_at": "2025-03-01T10:00:00Z",
                 "result": keypoint_results(np.asarray(xy) + 0.5 * (u - 1), ["nucleus"] * len(xy), w, h)}
                for u in (1, 2)]  # two annotators half a pixel apart: consensus points are averages
        tasks.append({"id": n + 1, "data": {"image_id": image_id, "round": 1, "width": w, "height": h},
                      "annotations": anns})
    folder = tmp_path / "annotations" / "round-001"
    folder.mkdir(parents=True)
    (folder / "export.json").write_text(json.dumps(tasks))
    (folder / "server.json").write_text(json.dumps({"annotators": {"1": "a@lab", "2": "b@lab"}}))
    return {"annotations": tmp_path / "annotations", "manifest": tmp_path / "manifest.parquet",
            "out": tmp_path / "points.parquet", "consensus": tmp_path / "consensus.parquet",
            "report": tmp_path / "points_report.json"}


def _check_slide_columns(table):
    assert table.column_names[-3:] == SLIDE_POINT_FIELDS.names
    for image_id in CLICKS:
        part = table.filter(pa.compute.equal(table.column("image_id"), image_id))
        assert part.num_rows > 0
        xy = np.column_stack([part.column("x").to_numpy(), part.column("y").to_numpy()])
        if image_id not in TILES:
            assert part.column("slide_id").null_count == part.column("slide_x").null_count == part.num_rows
            continue
        tile = TILES[image_id]
        assert set(part.column("slide_id").to_pylist()) == {tile.slide_id}
        slide_xy = np.column_stack([part.column("slide_x").to_numpy(), part.column("slide_y").to_numpy()])
        np.testing.assert_allclose(slide_to_tile(tile, slide_xy), xy, rtol=0, atol=0.01)
        np.testing.assert_allclose(slide_xy, tile_to_slide(tile, xy), rtol=0, atol=1e-9)
        assert ((slide_xy >= [tile.x0, tile.y0]) & (slide_xy <= [tile.x0 + tile.width0, tile.y0 + tile.height0])).all()


def test_points_on_tiles_carry_their_slide_position(tree):
    write_table("manifest", _manifest(), tree["manifest"])
    result = stage.run(LabelStudioParams(), LABELS, **tree)
    points, consensus = read_table("points", tree["out"]), read_table("points", tree["consensus"])
    assert result.points == points.num_rows == 2 * 7 and consensus.num_rows == 7
    _check_slide_columns(points)
    _check_slide_columns(consensus)
    # a click at the tile's corner lands on the tile's level-0 corner
    corner = points.filter(pa.compute.equal(points.column("annotator"), "a@lab")).to_pylist()[2]
    assert (corner["x"], corner["y"], corner["slide_x"], corner["slide_y"]) == pytest.approx((0, 0, 5005, 917))


def test_without_tile_rows_the_points_tables_have_no_slide_columns(tree):
    write_table("manifest", _manifest(tiles=False), tree["manifest"])
    stage.run(LabelStudioParams(), LABELS, **tree)
    for name in ("out", "consensus"):
        assert not set(SLIDE_POINT_FIELDS.names) & set(read_table("points", tree[name]).column_names)


def test_points_with_and_without_slide_columns_combine_and_merge():
    plain = points_table({"image_id": ["img", "t1"], "x": [1.0, 2.0], "y": [3.0, 4.0], "label": "nucleus",
                          "annotator": "a", "round": 1, "origin": "manual"})
    on_tiles = slide_points(points_table({"image_id": ["t1", "t1"], "x": [2.2, 9.0], "y": [4.1, 9.0],
                                          "label": "nucleus", "annotator": "b", "round": 2, "origin": "manual"}),
                            _manifest())
    both = CollectedPoints.combine([CollectedPoints(points=plain), CollectedPoints(points=on_tiles)]).points
    both = validate_table("points", both)
    assert both.column("slide_x").null_count == 2 and both.column("slide_x")[2].as_py() == pytest.approx(
        tile_to_slide(TILES["t1"], [[2.2, 4.1]])[0, 0])
    merged = consensus_table(both, 1.0, 0.5)  # the two t1 clicks near (2, 4) merge; slide columns are dropped
    assert merged.num_rows == 3 and "slide_x" not in merged.column_names
    assert slide_points(merged, _manifest()).column("slide_x").null_count == 1  # recomputed from the manifest
    assert slide_points(both, _manifest(tiles=False)) is both
