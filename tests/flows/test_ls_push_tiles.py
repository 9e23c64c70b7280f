"""flows.ls_push for whole-slide tiles (no server: the display copies and the task JSON Label Studio imports)."""

from __future__ import annotations

import shutil

import numpy as np
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
