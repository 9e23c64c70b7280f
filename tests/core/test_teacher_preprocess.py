"""Teacher preprocessing: intensity normalisation to 8-bit RGB and the tile grid."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nucleate.io.images import percentile_stretch
from nucleate.teacher import tile_boxes, to_rgb8
from nucleate.teacher.preprocess import image_tiles

RNG = np.random.default_rng(0)


def test_uint8_rgb_passes_unchanged():
    rgb = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    assert np.array_equal(to_rgb8(rgb), rgb)


def test_uint16_gray_is_percentile_clipped_and_repeated_into_rgb():
    gray = np.arange(0, 10_000, dtype=np.uint16).reshape(100, 100)
    out = to_rgb8(gray, percentiles=(1.0, 99.0))
    assert out.shape == (100, 100, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    lo, hi = np.percentile(gray.astype(np.float32), [1.0, 99.0])
    expected = np.rint(np.clip((gray.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255)).astype(np.uint8)
    assert np.array_equal(out[..., 0], expected)
    assert (out[..., 0] == 0).sum() >= 100 and (out[..., 0] == 255).sum() >= 100  # the clipped tails


def test_dim_uint8_gray_is_stretched_and_flat_image_is_black():
    dim = RNG.integers(10, 40, (32, 32), dtype=np.uint8)
    out = to_rgb8(dim, percentiles=(0.0, 100.0))
    assert out.min() == 0 and out.max() == 255
    assert not to_rgb8(np.full((8, 8), 700, np.uint16)).any()


def test_to_rgb8_is_the_shared_stretch_repeated_into_rgb():
    """The teacher sees exactly nucleate.io.images.percentile_stretch (its edge rules are tested there)."""
    gray = RNG.integers(0, 4096, (30, 40), dtype=np.uint16)
    gray[0, :5] = 60_000
    out = to_rgb8(gray, (0.5, 99.8))
    expected = percentile_stretch(gray, (0.5, 99.8))
    assert all(np.array_equal(out[..., c], expected) for c in range(3))


def test_uint16_rgb_uses_one_range_for_all_channels():
    rgb = np.zeros((10, 10, 3), np.uint16)
    rgb[..., 0], rgb[..., 1] = 1000, 500
    out = to_rgb8(rgb, percentiles=(0.0, 100.0))
    assert out[0, 0].tolist() == [255, 128, 0]


@pytest.mark.parametrize(
    ("image", "message"),
    [(np.zeros((4, 4, 2), np.uint8), "shape"), (np.zeros((0, 4), np.uint8), "no pixels"),
     (np.zeros((3, 3), bool), "pixel type"), (np.zeros((4, 4), np.uint16), "percentiles")],
)
def test_bad_images_raise(image, message):
    with pytest.raises(ValueError, match=message):
        to_rgb8(image, (0.5, 99.8) if message != "percentiles" else (60.0, 40.0))


def test_small_image_is_one_tile_and_tile_zero_disables_tiling():
    assert tile_boxes(100, 200, 224, 16) == [(0, 0, 100, 200)]
    assert tile_boxes(1000, 2000, 0, 16) == [(0, 0, 1000, 2000)]


def test_exact_grid_at_native_resolution():
    boxes = tile_boxes(448, 672, 224, 16)
    assert boxes == [(y, x, 224, 224) for y in (0, 224) for x in (0, 224, 448)]


def test_grid_over_the_cap_grows_the_tiles():
    boxes = tile_boxes(1024, 1024, 224, 16)  # 5 x 5 at 224 px is over 16
    assert len(boxes) <= 16
    side = boxes[0][2]
    assert side > 224 and math.ceil(1024 / side) ** 2 <= 16


def test_elongated_image_spreads_tiles_along_the_long_axis():
    boxes = tile_boxes(50, 5000, 224, 8)
    assert len(boxes) == 8 and all(b[2] == b[3] == 50 for b in boxes)
    xs = [b[1] for b in boxes]
    assert xs[0] == 0 and xs[-1] == 5000 - 50 and xs == sorted(xs)


@settings(max_examples=200, deadline=None)
@given(h=st.integers(1, 3000), w=st.integers(1, 3000), tile=st.integers(0, 512), cap=st.integers(1, 64))
def test_tiles_are_inside_square_capped_and_cover_when_possible(h, w, tile, cap):
    boxes = tile_boxes(h, w, tile, cap)
    assert 1 <= len(boxes) <= cap
    for y, x, bh, bw in boxes:
        assert 0 <= y and 0 <= x and y + bh <= h and x + bw <= w
    if len(boxes) > 1:
        assert all(b[2] == b[3] for b in boxes)
        side = boxes[0][2]
        if side < min(h, w):  # the grid was not squeezed: every pixel is covered
            covered = np.zeros((h, w), bool)
            for y, x, bh, bw in boxes:
                covered[y : y + bh, x : x + bw] = True
            assert covered.all()


def test_image_tiles_are_views_of_the_boxes():
    rgb = RNG.integers(0, 256, (300, 300, 3), dtype=np.uint8)
    tiles = image_tiles(rgb, 128, 16)
    boxes = tile_boxes(300, 300, 128, 16)
    assert len(tiles) == len(boxes) == 9
    y, x, h, w = boxes[4]
    assert np.array_equal(tiles[4], rgb[y : y + h, x : x + w])
