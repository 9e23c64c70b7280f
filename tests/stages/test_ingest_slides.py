"""Whole-slide images in the pool: ingest tiles them (one manifest row per tissue tile), and the stages that read
pool pixels (teacher, pseudomasks) read the tiles from their slide, the same pixels as nucleate.slides.read_tile."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from slides_data import MPP, PARAMS, pattern, write_slide
from typer.testing import CliRunner

from nucleate.config import Params, PseudomaskParams, params_from_dict
from nucleate.io import (
    TILE_FIELDS,
    content_id,
    probs_array,
    read_image,
    read_labels,
    read_table,
    write_image,
    write_labels,
    write_table,
)
from nucleate.pseudomask import from_points
from nucleate.slides import PoolRows, Tile, open_slide, read_pool_image, read_tile, tile_grid, tissue_mask
from nucleate.teacher.random_clip import save_random_clip
from tasks import ingest, pseudomasks, teacher, train
from tasks._map import SequentialMapper

RNG = np.random.default_rng(13)
N_TILES = 11  # tissue tiles of the generated slide at PARAMS (tests/core/test_slides.py)


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, Path]:
    """The generated slide with and without resolution metadata, and a small slide without tissue."""
    where = tmp_path_factory.mktemp("wsi")
    image = pattern()
    white = np.full((512, 512, 3), 255, np.uint8)
    return {"known": write_slide(where / "known.tif", image, MPP),
            "nompp": write_slide(where / "nompp.tif", image, None),
            "white": write_slide(where / "white.tif", white, MPP)}


@pytest.fixture
def folder(tmp_path, slides) -> Path:
    """A slide in the pool, a plain PNG and a plain single-level TIFF."""
    root = tmp_path / "images"
    (root / "wsi").mkdir(parents=True)
    shutil.copyfile(slides["known"], root / "wsi" / "s1.tif")
    write_image(root / "p.png", RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    write_image(root / "plain.tif", RNG.integers(0, 256, (30, 20), dtype=np.uint8))
    return root


def _expected_tiles(path: Path) -> list[Tile]:
    with open_slide(path, slide_id=content_id(path)) as slide:
        return tile_grid(slide, tissue_mask(slide, PARAMS), PARAMS)


def test_ingest_makes_one_row_per_tissue_tile_and_reads_them_back(folder, tmp_path, line_log):
    manifest = tmp_path / "manifest.parquet"
    report = ingest.run(PARAMS, folder=folder, manifest=manifest, log=line_log)
    table = read_table("manifest", manifest)
    assert table.column_names[8:] == TILE_FIELDS.names
    rows = table.to_pylist()
    plain = {r["path"]: r for r in rows if r["slide_id"] is None}
    assert sorted(plain) == ["p.png", "plain.tif"]  # a single-level TIFF stays a plain image
    assert all(plain[p][f] is None for p in plain for f in TILE_FIELDS.names)
    tiles = [r for r in rows if r["slide_id"] is not None]
    slide_file = folder / "wsi" / "s1.tif"
    expected = _expected_tiles(slide_file)
    assert len(tiles) == len(expected) == N_TILES
    for row, tile in zip(tiles, expected, strict=True):
        assert row["image_id"] == tile.image_id and row["slide_id"] == content_id(slide_file)
        assert (row["path"], row["width"], row["height"], row["channels"], row["dtype"], row["split"]) == (
            "wsi/s1.tif", 128, 128, 3, "uint8", "pool")
        assert row["bytes"] == slide_file.stat().st_size
        assert Tile.from_manifest(row) == tile
    pool = PoolRows(table, ["split"])  # what the stages hand read_pool_image
    assert list(pool) == [r["image_id"] for r in rows] and "nope" not in pool
    assert all(pool[r["image_id"]] == {k: r[k] for k in ("image_id", "path", "width", "split", *TILE_FIELDS.names)}
               for r in rows)
    with open_slide(slide_file) as slide:
        for row, tile in zip(tiles, expected, strict=True):
            np.testing.assert_array_equal(read_pool_image(folder, pool[row["image_id"]]), read_tile(slide, tile))
    assert (report.added, report.slides, report.tiles, report.skipped) == (2, 1, N_TILES, [])
    assert line_log.lines[-1] == (f"ingest: 2 added, 0 unchanged, 0 skipped, 0 missing; slides: 1 tiled "
                                  f"({N_TILES} tiles added), 0 unchanged, 0 without tissue -> {manifest}")


def test_reingest_does_not_retile_and_old_manifests_gain_null_tile_columns(folder, tmp_path, slides, line_log):
    manifest = tmp_path / "manifest.parquet"
    slide_file = folder / "wsi" / "s1.tif"
    moved = tmp_path / "s1.tif"
    shutil.move(slide_file, moved)
    ingest.run(PARAMS, folder=folder, manifest=manifest)
    before = read_table("manifest", manifest)
    assert "slide_id" not in before.column_names  # no slide, no tile columns: old manifests stay as they were
    plain = before.to_pylist()[0]
    assert PoolRows(before)[plain["image_id"]] == {k: plain[k] for k in ("image_id", "path", "width")}

    shutil.move(moved, slide_file)
    report = ingest.run(PARAMS, folder=folder, manifest=manifest)
    first = read_table("manifest", manifest)
    assert (report.unchanged, report.tiles) == (2, N_TILES) and first.num_rows == 2 + N_TILES
    assert first.select(before.column_names).slice(0, 2).equals(before)
    assert first.column("slide_id").null_count == 2

    other = dataclasses.replace(PARAMS, tile_px=64)  # a slide once in is not tiled again, whatever the params
    again = ingest.run(other, folder=folder, manifest=manifest, log=line_log)
    assert read_table("manifest", manifest).equals(first)
    assert (again.slides, again.slides_unchanged, again.tiles, again.added, again.unchanged) == (0, 1, 0, 0, 2)
    assert "slides: 0 tiled (0 tiles added), 1 unchanged" in line_log.lines[-1]

    shutil.copyfile(slide_file, folder / "copy.tif")  # same bytes elsewhere
    shutil.copyfile(slides["nompp"], slide_file)  # other bytes under the ingested name
    changed = ingest.run(PARAMS, folder=folder, manifest=manifest)
    assert dict(changed.skipped) == {"copy.tif": "duplicate of wsi/s1.tif (same content)",
                                     "wsi/s1.tif": "content changed since it was ingested as "
                                     f"{content_id(slides['known'])}; restore it, or save the new version under a "
                                     "new name"}
    assert read_table("manifest", manifest).equals(first)

    (folder / "copy.tif").unlink()
    slide_file.unlink()  # gone: reported once (not once per tile), its rows kept
    gone = ingest.run(PARAMS, folder=folder, manifest=manifest)
    assert gone.missing == ["wsi/s1.tif"] and read_table("manifest", manifest).equals(first)


def test_bad_slides_are_one_line_each_and_strict_fails(tmp_path, slides, line_log):
    root = tmp_path / "images"
    root.mkdir()
    shutil.copyfile(slides["nompp"], root / "nompp.tif")
    shutil.copyfile(slides["white"], root / "white.tif")
    data = slides["known"].read_bytes()
    (root / "cut.svs").write_bytes(data[: len(data) // 2])
    (root / "vendor.mrxs").write_bytes(b"not a slide")
    (root / "empty.ndpi").write_bytes(b"")
    manifest = tmp_path / "manifest.parquet"
    report = ingest.run(PARAMS, folder=root, manifest=manifest, log=line_log)
    skipped = dict(report.skipped)
    assert sorted(skipped) == ["cut.svs", "empty.ndpi", "nompp.tif", "vendor.mrxs"]
    assert "truncated" in skipped["cut.svs"] and "empty" in skipped["empty.ndpi"]
    assert "no resolution metadata" in skipped["nompp.tif"] and "slides.slide_mpp" in skipped["nompp.tif"]
    if importlib.util.find_spec("openslide") is None:
        assert "openslide" in skipped["vendor.mrxs"]
    lines = [line for line in line_log.lines if line.startswith(("skipped ", "slide "))]
    assert len(lines) == 5 and all("\n" not in line for line in lines)
    assert report.no_tissue == ["white.tif"] and any(line.startswith("slide white.tif: no tile") for line in lines)
    assert read_table("manifest", manifest).num_rows == 0

    # the resolution from params, used only where the file has none
    fixed = ingest.run(dataclasses.replace(PARAMS, slide_mpp=MPP), folder=root, manifest=manifest)
    assert (fixed.slides, fixed.tiles) == (1, N_TILES) and "nompp.tif" not in dict(fixed.skipped)
    rows = [r for r in read_table("manifest", manifest).to_pylist() if r["path"] == "nompp.tif"]
    assert len(rows) == N_TILES and read_pool_image(root, rows[0]).shape == (rows[0]["width"], rows[0]["width"], 3)
    with pytest.raises(ingest.IngestError, match=r"--strict: 4 file\(s\) skipped"):
        ingest.run(PARAMS, folder=root, manifest=tmp_path / "strict.parquet", strict=True)
    assert not (tmp_path / "strict.parquet").exists()


def test_cli_tiles_with_the_slides_params(folder, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"slides": {k: v for k, v in dataclasses.asdict(PARAMS).items()
                                                 if v is not None}}))
    manifest = tmp_path / "manifest.parquet"
    app = ingest.typer.Typer(add_completion=False)
    app.command()(ingest.command)
    result = CliRunner().invoke(app, [str(folder), "--manifest", str(manifest), "--params", str(params)])
    assert result.exit_code == 0, result.output
    widths = read_table("manifest", manifest).column("width").to_pylist()
    assert widths.count(128) == N_TILES


def _points(per_image: dict[str, np.ndarray]) -> pa.Table:
    ids = [i for i, xy in per_image.items() for _ in xy]
    xy = np.concatenate(list(per_image.values()))
    n = len(ids)
    return pa.table({"image_id": ids, "x": xy[:, 0], "y": xy[:, 1], "label": ["nucleus"] * n,
                     "annotator": ["a"] * n, "task_id": [None] * n, "annotation_id": [None] * n, "round": [1] * n,
                     "origin": ["manual"] * n, "created_at": [datetime(2026, 1, 1, tzinfo=UTC)] * n})


@pytest.mark.usefixtures("one_torch_thread")
def test_teacher_pseudomasks_and_train_read_tiles_from_their_slide(tmp_path, slides, line_log):
    """A slide in the pool and its tiles' pixels saved as PNGs: the teacher scores each tile as its PNG,
    pseudomasks make the same masks, train trains on tiles. Another slide under gold/, with a mask file that
    mirrors its path: tiles have no gold masks (not scored, not a crash)."""
    root = tmp_path / "images"
    (root / "pool").mkdir(parents=True)
    shutil.copyfile(slides["known"], root / "pool" / "s1.tif")
    (root / "gold").mkdir()
    write_slide(root / "gold" / "g.tif", pattern()[::-1].copy(), MPP)
    masks = tmp_path / "masks"
    write_labels(masks / "gold" / "g.tif", np.ones((40, 40), np.int32))  # not the mask of any tile
    picked = [0, 1, 3]  # tiles of different pixels (the pattern repeats every 512 level-0 px)
    expected = [_expected_tiles(root / "pool" / "s1.tif")[k] for k in picked]
    with open_slide(root / "pool" / "s1.tif") as slide:
        for k, tile in enumerate(expected):
            write_image(root / "pool" / "png" / f"tile{k}.png", read_tile(slide, tile))
    manifest = tmp_path / "manifest.parquet"
    ingest.run(PARAMS, folder=root, manifest=manifest)
    rows = read_table("manifest", manifest).to_pylist()
    tiles = [[r for r in rows if r["path"] == "pool/s1.tif"][k] for k in picked]
    gold_tile = next(r for r in rows if r["path"] == "gold/g.tif")
    pngs = {r["path"]: r["image_id"] for r in rows if r["slide_id"] is None}
    pairs = [(t["image_id"], pngs[f"pool/png/tile{k}.png"]) for k, t in enumerate(tiles)]
    assert gold_tile["split"] == "gold" and len(rows) == 2 * N_TILES + 3

    clip = save_random_clip(tmp_path / "clip", "tiny")
    params = params_from_dict({"teacher": {"backend": "clip", "model": str(clip), "device": "cpu", "tile": 64,
                                           "max_tiles": 4}}).teacher
    probs_path = tmp_path / "teacher_probs.parquet"
    report = teacher.run(params, manifest=manifest, out=probs_path, cache=None)
    assert report.failed == [] and report.scored == len(rows)
    table = read_table("teacher_probs", probs_path)
    probs = dict(zip(table.column("image_id").to_pylist(), probs_array(table), strict=True))
    for tile_id, png_id in pairs:
        np.testing.assert_allclose(probs[tile_id], probs[png_id], atol=1e-6)
    # chunks as a Dask cluster scores them (score_chunk_task gets manifest rows, not paths), here in this process
    teacher.run(params, manifest=manifest, out=tmp_path / "chunked.parquet", cache=None, mapper=SequentialMapper())
    assert read_table("teacher_probs", tmp_path / "chunked.parquet").equals(table)

    xy = np.array([[20.5, 30.5], [64.0, 64.0], [100.5, 90.5]])
    points = tmp_path / "points.parquet"
    clicked = [i for pair in pairs[:2] for i in pair] + [gold_tile["image_id"]]
    write_table("points", _points({i: xy for i in clicked}), points)
    p = PseudomaskParams(nucleus_radius_px=6.0, sample_pixels=2000)
    report = pseudomasks.run(p, 0, points=points, manifest=manifest, out=tmp_path / "pm", gold_masks=masks)
    assert (report.images, report.failed, report.gold) == (5, [], {})
    assert report.qc.startswith("skipped")
    for k, (tile_id, png_id) in enumerate(pairs[:2]):
        got = read_labels(tmp_path / "pm" / "instances" / f"{tile_id}.tif")
        assert got.shape == (128, 128) and got.max() >= 3
        np.testing.assert_array_equal(got, read_labels(tmp_path / "pm" / "instances" / f"{png_id}.tif"))
        direct = from_points(read_image(root / "pool" / "png" / f"tile{k}.png"), xy, params=p, seed=0)
        np.testing.assert_array_equal(got, direct.instances)

    cfg = Params()
    result = train.run(
        dataclasses.replace(cfg.model, width=8, nucleus_radius_px=4.0),
        dataclasses.replace(cfg.train, epochs=1, steps_per_epoch=2, batch_size=2, patch_px=32, val_every=1,
                            kd_unlabeled=1),
        cfg.donuseg, p, cfg.predict, params.classes, 0, manifest=manifest, out=tmp_path / "model", points=points,
        pseudomasks=tmp_path / "pm", masks=masks, teacher_probs=probs_path,
        student_probs=tmp_path / "student_probs.parquet", log=line_log)
    assert result.images == 4 and result.gold_dice is None  # 2 tiles + 2 PNGs; the gold tile has no mask
    assert read_table("student_probs", tmp_path / "student_probs.parquet").num_rows == N_TILES + 3
