"""nucleate.slides on a generated pyramidal TIFF of a known pattern (tissue rectangles + a position code)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tifffile
from slides_data import (  # noqa: F401 - all re-exported: other tests import them from here too
    DOWNSAMPLES,
    HOLE,
    MPP,
    PARAMS,
    SPECK,
    A,
    B,
    C,
    D,
    H,
    W,
    pattern,
    write_slide,
)

from nucleate.slides import (
    SlideError,
    Tile,
    open_slide,
    read_tile,
    slide_to_tile,
    tile_grid,
    tile_to_slide,
    tissue_mask,
)
from nucleate.slides.grid import tissue_fractions


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return pattern()


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory, image) -> Path:
    return write_slide(tmp_path_factory.mktemp("slides") / "known.tif", image, MPP)


@pytest.fixture()
def slide(slide_path):
    with open_slide(slide_path) as s:
        yield s


@pytest.fixture(scope="module")
def mask_and_tiles(slide_path):
    with open_slide(slide_path) as s:
        tissue = tissue_mask(s, PARAMS)
        return tissue, tile_grid(s, tissue, PARAMS)


def test_levels_and_resolution_from_metadata(slide):
    assert slide.slide_id == "known"
    assert slide.dimensions == (W, H)
    assert slide.level_dimensions == ((W, H), (W // 2, H // 2), (W // 4, H // 4), (W // 8, H // 8))
    assert slide.level_downsamples == (1.0, 2.0, 4.0, 8.0)
    assert slide.mpp == pytest.approx((MPP, MPP))


def test_mpp_argument_overrides_metadata(slide_path):
    with open_slide(slide_path, mpp=0.25, slide_id="s1") as s:
        assert s.mpp == (0.25, 0.25) and s.slide_id == "s1"


@pytest.mark.parametrize("channel", ["saturation", "optical_density"])
def test_tissue_mask_is_exactly_the_tissue_rectangles(mask_and_tiles, slide, channel):
    tissue, _ = mask_and_tiles
    if channel != PARAMS.tissue_channel:
        tissue = tissue_mask(slide, dataclasses.replace(PARAMS, tissue_channel=channel))
    assert tissue.scale == (8.0, 8.0) and tissue.mpp == pytest.approx((4.0, 4.0))
    expected = np.zeros((H // 8, W // 8), bool)
    for x0, y0, x1, y1 in (A, B, C, D):  # the hole filled, the speck gone
        expected[y0 // 8 : y1 // 8, x0 // 8 : x1 // 8] = True
    np.testing.assert_array_equal(tissue.mask, expected)
    assert 0.2 < tissue.fraction < 0.3


def test_optical_density_finds_gray_tissue_that_has_no_saturation(tmp_path, image):
    """A gray (single-channel) slide: saturation is 0 everywhere, optical density still separates the tissue."""
    path = tmp_path / "gray.tif"
    write_slide(path, np.ascontiguousarray(image[..., 1]), MPP)  # tissue 40-103, background 255
    with open_slide(path) as s:
        assert not tissue_mask(s, PARAMS).mask.any()
        od = tissue_mask(s, dataclasses.replace(PARAMS, tissue_channel="optical_density"))
    with open_slide(write_slide(tmp_path / "rgb.tif", image, MPP)) as s:
        np.testing.assert_array_equal(od.mask, tissue_mask(s, PARAMS).mask)


def test_optical_density_floor_keeps_faint_glass_out(tmp_path):
    """Glass at OD 0.02 with a faint 0.04 smear and no tissue: Otsu alone would split them; the floor (0.05) keeps
    both out; lowering the floor lets the smear in."""
    from nucleate.slides.tissue import optical_density, tissue_signal

    image = np.full((64, 64, 3), 243, np.uint8)  # OD 0.021
    image[16:48, 16:48] = 233  # OD 0.040
    assert optical_density(image[:1, :1])[0, 0] == pytest.approx(0.0210, abs=1e-3)
    params = dataclasses.replace(PARAMS, tissue_channel="optical_density")
    assert not tissue_signal(image, params).any()
    smear = tissue_signal(image, dataclasses.replace(params, min_optical_density=0.03))
    assert smear.sum() == 32 * 32 and smear[16:48, 16:48].all()


def test_tiles_kept_by_tissue_fraction_on_the_slide_mask(mask_and_tiles):
    _, tiles = mask_and_tiles
    got = {(t.x0 // 256, t.y0 // 256): t.tissue_fraction for t in tiles}
    whole = {(c, r): 1.0 for c in (1, 2, 3) for r in (1, 2)} | {(c, r): 1.0 for c in (5, 6) for r in (3, 4)}
    assert got == pytest.approx(whole | {(0, 5): 128 * 248 / 256**2})  # D's tile (6, 0) at 0.156 is dropped
    t = tiles[0]
    assert (t.width0, t.height0, t.tile_px, t.mpp, t.level) == (256.0, 256.0, 128, 1.0, 1)
    assert t.slide_id == "known" and set(t.as_row()) == {f.name for f in dataclasses.fields(Tile)}


def test_all_tissue_tile_is_kept(mask_and_tiles, image):
    """A tile that is tissue edge to edge (no background for a per-tile Otsu to find) is kept whole."""
    _, tiles = mask_and_tiles
    (inner,) = [t for t in tiles if (t.x0, t.y0) == (512, 256)]
    assert inner.tissue_fraction == 1.0
    assert (image[256:512, 512:768, 0] == 200).all()


def test_fractions_are_exact_for_boxes_cutting_mask_pixels(mask_and_tiles):
    tissue, _ = mask_and_tiles
    # A spans mask px 32..128 x 32..96; boxes starting half a mask pixel (4 level-0 px) before / inside it
    boxes = np.array([[252, 256, 8, 8], [256, 252, 8, 8], [1020, 764, 8, 8], [-100, -100, 50, 50], [252, 252, 8, 8]])
    np.testing.assert_allclose(tissue_fractions(tissue, boxes), [0.5, 0.5, 0.25, 0.0, 0.25])


@pytest.mark.parametrize(("slide_mpp", "tile_px", "target"), [(MPP, 128, 1.0), (0.2526, 100, 0.75), (0.5, 7, 3.3)])
def test_tile_slide_round_trip_within_a_hundredth_px(slide_path, slide_mpp, tile_px, target):
    with open_slide(slide_path, mpp=slide_mpp) as s:
        params = dataclasses.replace(PARAMS, target_mpp=target, tile_px=tile_px, tissue_threshold=0.0)
        tissue = tissue_mask(s, params)
        tiles = tile_grid(s, tissue, params)
    rng = np.random.default_rng(13)
    for tile in tiles[:: max(1, len(tiles) // 7)]:
        pts = rng.uniform(0, tile_px, size=(50, 2))
        back = slide_to_tile(tile, tile_to_slide(tile, pts))
        assert np.abs(back - pts).max() < 0.01
        corners = tile_to_slide(tile, [[0, 0], [tile_px, tile_px]])
        np.testing.assert_allclose(corners, [[tile.x0, tile.y0], [tile.x0 + tile.width0, tile.y0 + tile.height0]])
        assert abs(tile.width0 - tile_px * target / slide_mpp) < 1.0 and float(tile.width0).is_integer()
    # edge to edge: each row's tiles share their edges, so a level-0 point lies on exactly one tile
    by_row = {}
    for tile in tiles:
        by_row.setdefault(tile.y0, []).append(tile)
    for row in by_row.values():
        assert all(a.x0 + a.width0 == b.x0 for a, b in zip(row, row[1:], strict=False))
    ys = sorted(by_row)
    assert all(by_row[a][0].y0 + by_row[a][0].height0 == b for a, b in zip(ys, ys[1:], strict=False))


def _centres_in_slide(tile: Tile) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 (row, col) index of the pixel under each tile pixel's centre."""
    j, i = np.meshgrid(np.arange(tile.tile_px), np.arange(tile.tile_px))
    xy = tile_to_slide(tile, np.column_stack([j.ravel() + 0.5, i.ravel() + 0.5]))
    shape = (tile.tile_px, tile.tile_px)
    return np.floor(xy[:, 1]).astype(int).reshape(shape), np.floor(xy[:, 0]).astype(int).reshape(shape)


@pytest.mark.parametrize(("target", "tile_px", "level"), [(0.5, 256, 0), (1.0, 128, 1), (4.0, 32, 3)])
def test_read_tile_equals_the_pattern_at_its_place(slide, image, target, tile_px, level):
    params = dataclasses.replace(PARAMS, target_mpp=target, tile_px=tile_px)
    tiles = tile_grid(slide, tissue_mask(slide, params), params)
    for tile in tiles:
        assert tile.level == level
        rows, cols = _centres_in_slide(tile)
        np.testing.assert_array_equal(read_tile(slide, tile), image[rows, cols])


def test_read_tile_resampled_between_levels_is_close_to_the_pattern(slide, image):
    params = dataclasses.replace(PARAMS, target_mpp=0.75, tile_px=100)  # 1.5 level-0 px per tile px
    tiles = [t for t in tile_grid(slide, tissue_mask(slide, params), params) if t.tissue_fraction == 1.0]
    assert tiles and all(t.level == 0 for t in tiles)
    for tile in tiles[:3]:
        rows, cols = _centres_in_slide(tile)
        diff = np.abs(read_tile(slide, tile).astype(int) - image[rows, cols])
        assert diff.shape == (100, 100, 3) and np.median(diff) == 0 and diff.mean() < 2


def test_tile_past_the_slide_edge_reads_white_there(slide, image):
    params = dataclasses.replace(PARAMS, tile_px=160, tissue_threshold=0.0)  # 320 level-0 px: 6.4 tiles wide
    tiles = tile_grid(slide, tissue_mask(slide, params), params)
    (edge,) = [t for t in tiles if (t.x0, t.y0) == (1920, 0)]
    pixels = read_tile(slide, edge)
    inside = (W - edge.x0) // 2  # tile columns on the slide
    assert (pixels[:, inside:] == 255).all()
    rows, cols = _centres_in_slide(edge)
    np.testing.assert_array_equal(pixels[:, :inside], image[rows[:, :inside], cols[:, :inside]])


def test_slide_without_resolution_says_to_pass_it(tmp_path, image):
    path = write_slide(tmp_path / "nores.tif", image[:512, :512], None)
    with pytest.raises(SlideError, match="no resolution metadata") as err:
        open_slide(path)
    assert str(path) in str(err.value) and "mpp" in str(err.value) and "\n" not in str(err.value)
    with open_slide(path, mpp=0.5) as s:
        assert s.mpp == (0.5, 0.5)


def test_truncated_slide_is_one_clear_error(tmp_path, slide_path):
    data = slide_path.read_bytes()
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError, match="truncated") as err:
        open_slide(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["slide.mrxs", "notes.ndpi", "empty.tif"])
def test_unsupported_or_unreadable_format(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"" if name == "empty.tif" else b"not a tiff at all")
    with pytest.raises(SlideError, match="openslide") as err:
        open_slide(path)
    assert str(path) in str(err.value)


def test_missing_slide(tmp_path):
    with pytest.raises(SlideError, match="no such slide"):
        open_slide(tmp_path / "absent.svs")


def test_thumbnail_block_mean_in_strips_equals_one_read(slide_path, monkeypatch):
    """A thumbnail coarser than every level is shrunk by block means, strip by strip (bounded memory)."""
    from nucleate.slides import tissue as tissue_module

    params = dataclasses.replace(PARAMS, thumbnail_mpp=8.0)  # 16 level-0 px: level 3 (8) shrunk by 2
    with open_slide(slide_path) as s:
        whole, scale = tissue_module.thumbnail(s, params.thumbnail_mpp)
        monkeypatch.setattr(tissue_module, "_STRIP_PX", 256 * 5)  # 5 rows of level 3 -> strips of 4 rows
        strips, _ = tissue_module.thumbnail(s, params.thumbnail_mpp)
        mask = tissue_mask(s, params)
    assert scale == (16.0, 16.0) and whole.shape == (H // 16, W // 16, 3)
    np.testing.assert_array_equal(strips, whole)
    x0, y0, x1, y1 = A
    assert mask.mask[y0 // 16 : y1 // 16, x0 // 16 : x1 // 16].all() and mask.mpp == pytest.approx((8.0, 8.0))


@pytest.mark.parametrize("downsample", [1.0, 2.0, 4.000217, 3.99987, 16.5])
def test_level0_location_maps_back_to_the_level_pixel(downsample):
    from nucleate.slides.reader import level0_location

    for v in range(0, 5000, 7):
        assert int(level0_location(v, downsample) / downsample) == v


def test_shrink_averages_partial_edge_blocks_over_real_pixels():
    from nucleate.slides.tissue import _shrink

    image = np.zeros((5, 3, 3), np.uint8)
    image[4, :, :] = 90  # the last row: a partial block of one row
    image[:, 2, :] = 30  # the last column: a partial block of one column
    image[4, 2, :] = 10
    out = _shrink(image, 2)
    assert out.shape == (3, 2, 3)
    np.testing.assert_array_equal(out[..., 0], [[0, 30], [0, 30], [90, 10]])


def test_top_level_pyramid_and_gray_slide(tmp_path, image):
    """Levels as top-level reduced pages (as most readers write them); a gray slide reads as RGB."""
    path = write_slide(tmp_path / "flat.tif", image, MPP, subifds=False)
    with open_slide(path) as s:
        assert s.level_downsamples == (1.0, 2.0, 4.0, 8.0) and s.mpp == pytest.approx((MPP, MPP))
        tissue = tissue_mask(s, PARAMS)
        assert len(tile_grid(s, tissue, PARAMS)) == 11
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, image[:256, :256, 1], resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    with open_slide(gray) as s:
        np.testing.assert_array_equal(s.read_level(0, 0, 0, 256, 256), np.repeat(image[:256, :256, 1:2], 3, axis=2))
    deep = tmp_path / "deep.tif"
    tifffile.imwrite(deep, np.zeros((64, 64), np.uint16), resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    with open_slide(deep) as s, pytest.raises(SlideError, match="unsupported pixel type uint16") as err:
        tissue_mask(s, PARAMS)
    assert str(deep) in str(err.value)


def test_tile_as_a_manifest_row_reads_back_the_same_pixels(slide, slide_path, mask_and_tiles, tmp_path):
    import pyarrow as pa

    from nucleate.io import read_table, write_image, write_table
    from nucleate.slides import read_pool_image

    tile = mask_and_tiles[1][0]
    plain = np.zeros((4, 5), np.uint8)
    write_image(tmp_path / "plain.png", plain)
    (tmp_path / slide_path.name).symlink_to(slide_path)
    base = {"channels": 3, "dtype": "uint8", "split": "pool", "bytes": 1}
    rows = [{**base, "image_id": tile.image_id, "path": slide_path.name, "width": tile.tile_px,
             "height": tile.tile_px, **tile.manifest_columns()},
            {**base, "image_id": "p" * 32, "path": "plain.png", "width": 5, "height": 4, "channels": 1,
             **dict.fromkeys(tile.manifest_columns())}]
    write_table("manifest", pa.Table.from_pylist(rows), tmp_path / "manifest.parquet")
    back = read_table("manifest", tmp_path / "manifest.parquet").to_pylist()
    assert Tile.from_manifest(back[0]) == tile and back[1]["slide_id"] is None
    assert np.array_equal(read_pool_image(tmp_path, back[0]), read_tile(slide, tile))
    assert np.array_equal(read_pool_image(tmp_path, back[1]), plain)
    assert tile.image_id != dataclasses.replace(tile, x0=tile.x0 + 1).image_id and len(tile.image_id) == 32


def test_manifest_with_some_tile_columns_is_refused(tmp_path):
    import pyarrow as pa

    from nucleate.io import TableError, validate_table

    row = {"image_id": "a", "path": "a.png", "width": 1, "height": 1, "channels": 1, "dtype": "uint8",
           "split": "pool", "bytes": 1, "slide_id": "s"}
    with pytest.raises(TableError, match="but not tile_x0"):
        validate_table("manifest", pa.Table.from_pylist([row]))


def test_saturation_and_optical_density_match_their_float64_definitions():
    from skimage.color import rgb2hsv

    from nucleate.slides.tissue import optical_density, saturation

    image = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    image[:4], image[4:8] = 0, 77  # black, gray: saturation 0
    np.testing.assert_allclose(saturation(image), rgb2hsv(image)[..., 1], atol=1e-6)
    np.testing.assert_allclose(optical_density(image), -np.log10((image + 1.0) / 256).mean(-1), atol=1e-6)
    assert saturation(image).dtype == optical_density(image).dtype == np.float32
