"""flows.ls_push for whole-slide tiles: the display copies and the task JSON Label Studio imports, then a round of
tiles through a real Label Studio server to points in slide coordinates."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from slides_data import MPP, PARAMS, pattern, write_slide

from flows.ls_push import render_images, task_json
from nucleate.io import read_image, read_table, write_image
from nucleate.slides import Tile, open_slide, read_tile
from tasks import ingest


def test_a_tile_task_shows_the_tile_and_names_its_place_in_the_slide(tmp_path):
    root = tmp_path / "images"
    (root / "wsi").mkdir(parents=True)
    write_slide(root / "wsi" / "s1.tif", pattern(), MPP)
    write_image(root / "p.png", np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    ingest.run(PARAMS, folder=root, manifest=tmp_path / "manifest.parquet")
    manifest = read_table("manifest", tmp_path / "manifest.parquet")
    rows = manifest.to_pylist()
    plain, tile_row = rows[0], rows[3]
    assert plain["path"] == "p.png" and tile_row["path"] == "wsi/s1.tif"
    tile = Tile.from_manifest(tile_row)

    files = tmp_path / "files"
    records = render_images(manifest, [tile_row["image_id"], plain["image_id"]], files)
    rec = records[tile_row["image_id"]]
    with open_slide(root / "wsi" / "s1.tif") as slide:
        np.testing.assert_array_equal(read_image(files / rec.rel), read_tile(slide, tile))  # uint8 RGB as it is
    task = task_json(rec, 2, None, None, 0.6)["data"]
    assert (task["width"], task["height"], task["image_id"], task["round"]) == (128, 128, tile_row["image_id"], 2)
    assert {k: task[k] for k in ("slide", "slide_x0", "slide_y0", "slide_width0", "slide_height0", "mpp")} == {
        "slide": "wsi/s1.tif", "slide_x0": tile.x0, "slide_y0": tile.y0, "slide_width0": 256.0,
        "slide_height0": 256.0, "mpp": 1.0}
    assert task["name"] == f"slide wsi/s1.tif at ({tile.x0}, {tile.y0})" == "slide wsi/s1.tif at (768, 256)"

    plain_task = task_json(records[plain["image_id"]], 2, None, None, 0.6)["data"]
    assert plain_task["name"] == "p.png" and "slide" not in plain_task

    shutil.rmtree(files)  # a manifest without slides renders as before
    only_plain = manifest.select(manifest.column_names[:8]).slice(0, 1)
    again = render_images(only_plain, [plain["image_id"]], files, root=root)[plain["image_id"]]
    assert again.slide is None and read_image(files / again.rel).shape == (20, 30, 3)


@pytest.mark.slow
def test_tiles_round_trip_through_a_real_label_studio_to_slide_coordinates(ls_adapter, tmp_path):
    """ingest a slide -> push two tiles -> click on them -> pull -> the points stage: the server's tasks carry the
    slide and position, and each click comes back in tile px and in slide level-0 px."""
    from flows.ls_pull import pull
    from flows.ls_push import push
    from nucleate.annotations import keypoint_results
    from nucleate.config import LabelStudioParams
    from nucleate.slides import slide_to_tile
    from tasks import points as points_stage

    root = tmp_path / "images"
    root.mkdir()
    write_slide(root / "s1.tif", pattern(), MPP)
    ingest.run(PARAMS, folder=root, manifest=tmp_path / "manifest.parquet")
    manifest = read_table("manifest", tmp_path / "manifest.parquet")
    tiles = {r["image_id"]: Tile.from_manifest(r) for r in manifest.to_pylist()[:2]}
    labels = ("nucleus", "micronucleus")
    pid = ls_adapter.ensure_project("tiles", labels)
    ls_adapter.ensure_storage(pid, ls_adapter.conn.files_root / "images")
    records = render_images(manifest, list(tiles), ls_adapter.conn.files_root)
    report = push(ls_adapter, pid, [records[i] for i in tiles], round=1, labels=labels,
                  marker_pct=LabelStudioParams().point_radius_pct)
    by_task = {t["id"]: t["data"] for t in ls_adapter.tasks(pid)}
    rng = np.random.default_rng(3)
    clicked = {}
    for image_id, tile in tiles.items():
        data = by_task[report.created[image_id]]
        assert (data["slide"], data["slide_x0"], data["slide_y0"]) == ("s1.tif", tile.x0, tile.y0)
        xy = rng.uniform(0, tile.tile_px, (7, 2))
        ls_adapter.annotate(report.created[image_id], keypoint_results(xy, ["nucleus"] * 7, tile.tile_px,
                                                                       tile.tile_px))
        clicked[image_id] = xy
    pull(ls_adapter, pid, annotations=tmp_path / "annotations", inflight=tmp_path / "inflight.parquet")
    out = tmp_path / "stage"
    points_stage.run(LabelStudioParams(), labels, annotations=tmp_path / "annotations",
                     manifest=tmp_path / "manifest.parquet", out=out / "points.parquet",
                     consensus=out / "consensus.parquet", report=out / "report.json")
    points = read_table("points", out / "points.parquet").to_pylist()
    assert len(points) == 14
    for image_id, tile in tiles.items():
        rows = [r for r in points if r["image_id"] == image_id]
        xy = np.array([(r["x"], r["y"]) for r in rows])
        slide_xy = np.array([(r["slide_x"], r["slide_y"]) for r in rows])
        np.testing.assert_allclose(np.sort(xy, axis=0), np.sort(clicked[image_id], axis=0), atol=1e-6)
        np.testing.assert_allclose(slide_to_tile(tile, slide_xy), xy, atol=1e-9)
        assert {r["slide_id"] for r in rows} == {tile.slide_id}
