"""Whole-slide prediction's stitching on a generated slide of dark disks, some exactly across tile borders: read
each tile with a margin, segment it (threshold + watershed, no network), keep the nuclei each tile owns; every
disk comes out once."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from nucleate.config import SlidesParams
from nucleate.inference import instances_from_maps
from nucleate.slides import Tile, core_box, open_slide, read_tile, read_window, stitch_tile, tile_grid, tissue_mask
from tests.core.test_slides import write_slide

MPP = 0.5  # level-0 µm/px of the generated slide
W, H = 512, 384  # level-0 px
R = 6  # disk radius, level-0 px
PINK, DARK = (235, 160, 200), (70, 30, 110)
PARAMS = SlidesParams(target_mpp=0.5, tile_px=128, tissue_threshold=0.1, thumbnail_mpp=4.0, min_object_um2=100.0,
                      min_hole_um2=100.0, predict_overlap_px=32)  # fmt: skip


def disk_centres() -> np.ndarray:
    """(n, 2) level-0 (x, y) centres: a jittered grid plus disks centred on tile borders and a tile corner."""
    rng = np.random.default_rng(0)
    gx, gy = np.meshgrid(np.arange(40, W - 20, 48), np.arange(40, H - 20, 48))
    grid = np.column_stack([gx.ravel(), gy.ravel()]) + rng.uniform(-6, 6, (gx.size, 2))
    border = np.array([[128.0, 64.0], [256.0, 200.0], [300.0, 128.0], [384.0, 256.0], [256.0, 256.0],
                       [130.5, 300.0], [200.0, 126.0]])
    centres = np.concatenate([grid, border])
    keep = np.ones(len(centres), bool)  # drop grid disks touching another disk
    for i in range(len(centres)):
        d = np.hypot(*(centres[:i] - centres[i]).T)
        keep[i] = not (d[keep[:i]] < 2 * R + 4).any()
    return centres[keep]


def disks(centres: np.ndarray) -> np.ndarray:
    y, x = np.mgrid[0:H, 0:W] + 0.5  # pixel centres
    image = np.empty((H, W, 3), np.uint8)
    image[:] = PINK
    for cx, cy in centres:
        image[(x - cx) ** 2 + (y - cy) ** 2 <= R**2] = DARK
    return image


@pytest.fixture(scope="module")
def truth():
    return disk_centres()


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory, truth):
    return write_slide(tmp_path_factory.mktemp("wsi") / "disks.tif", disks(truth), MPP)


def _segment(window: np.ndarray):
    dark = (window.mean(-1) < 128).astype(np.float32)
    return instances_from_maps(dark, dark, threshold=0.5, markers="distance", peak_threshold=0.5,
                               peak_distance_px=4, min_area_px=5)


def _stitched(slide_path, params: SlidesParams):
    with open_slide(slide_path) as slide:
        tiles = tile_grid(slide, tissue_mask(slide, params), params)
        margin = params.predict_overlap_px // 2
        out = []
        for tile in tiles:
            window = read_window(slide, tile, margin)
            nuclei = stitch_tile(tile, margin, *_segment(window), outlines=True)
            out.append((tile, nuclei))
    return out


@pytest.mark.parametrize("target_mpp", [0.5, 0.8])  # level-0 copy; resampled (1.6 level-0 px per tile px)
def test_a_disk_across_a_tile_border_is_one_nucleus_and_none_is_lost(slide_path, truth, target_mpp):
    params = dataclasses.replace(PARAMS, target_mpp=target_mpp, tile_px=round(128 * 0.5 / target_mpp))
    stitched = _stitched(slide_path, params)
    assert len(stitched) == int(np.ceil(W * MPP / (target_mpp * params.tile_px))) * \
        int(np.ceil(H * MPP / (target_mpp * params.tile_px)))
    found = np.concatenate([n.slide_xy for _, n in stitched])
    d = np.hypot(found[:, None, 0] - truth[None, :, 0], found[:, None, 1] - truth[None, :, 1])
    assert len(found) == len(truth)
    assert (d.min(axis=1) < 1.0).all() and sorted(d.argmin(axis=1)) == list(range(len(truth)))
    crossing = [c for c in truth if any(abs(c[0] - x) < R for x in (128, 256, 384))
                or any(abs(c[1] - y) < R for y in (128, 256))]
    assert len(crossing) >= 6  # the test has disks across borders (with target_mpp 0.8: other borders, same disks)
    sx = target_mpp / MPP
    for tile, nuclei in stitched:
        x0, y0, x1, y1 = core_box(tile)
        assert ((nuclei.slide_xy >= [x0, y0]) & (nuclei.slide_xy < [x1, y1])).all()
        assert nuclei.labels.shape == (tile.tile_px, tile.tile_px) and nuclei.labels.max() == len(nuclei.scores)
        assert np.allclose(nuclei.xy * sx + [tile.x0, tile.y0], nuclei.slide_xy)
        for ring, centre in zip(nuclei.outlines, nuclei.slide_xy, strict=True):  # whole disk, uncut
            assert (ring[0] == ring[-1]).all()
            area = 0.5 * abs(np.dot(ring[:-1, 0], ring[1:, 1]) - np.dot(ring[1:, 0], ring[:-1, 1]))
            assert 0.6 * np.pi * R**2 < area < 1.2 * np.pi * R**2, area
            assert np.abs((ring.min(axis=0) + ring.max(axis=0)) / 2 - centre).max() < 1.0


def test_without_overlap_a_disk_across_a_border_counts_twice(slide_path, truth):
    stitched = _stitched(slide_path, dataclasses.replace(PARAMS, predict_overlap_px=0))
    assert sum(len(n.scores) for _, n in stitched) > len(truth)  # the failure the margin prevents


def test_the_window_is_the_tile_with_its_neighbours_pixels_around_it(slide_path):
    with open_slide(slide_path) as slide:
        tile = tile_grid(slide, tissue_mask(slide, PARAMS), PARAMS)[5]
        window = read_window(slide, tile, 16)
        assert window.shape == (160, 160, 3)
        assert (window[16:-16, 16:-16] == read_tile(slide, tile)).all()
        image = slide.read_level(0, tile.x0 - 16, tile.y0 - 16, 160, 160)
        assert (window == image).all()


def test_core_boxes_partition_the_plane_even_with_rounded_tile_corners():
    rng = np.random.default_rng(1)
    for width0 in (100.4, 37.3, 128.0):
        edges = np.round(np.arange(6) * width0).astype(int)  # as tile_grid lays them: whole-px edges
        tiles = [Tile("s", int(edges[i]), int(edges[j]), float(edges[i + 1] - edges[i]),
                      float(edges[j + 1] - edges[j]), 64, 1.0, 0, 1.0) for j in range(5) for i in range(5)]
        boxes = np.array([core_box(t) for t in tiles])
        points = rng.uniform(0, 4 * width0, (2000, 2))
        inside = ((points[:, None, 0] >= boxes[:, 0]) & (points[:, None, 0] < boxes[:, 2])
                  & (points[:, None, 1] >= boxes[:, 1]) & (points[:, None, 1] < boxes[:, 3]))
        assert (inside.sum(axis=1) == 1).all()
