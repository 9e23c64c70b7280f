"""nucleate.pseudomask.presets: PRESETS["qu2019"] against a transcription of Qu et al.'s prepare_data.py."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import measure, morphology
from skimage.draw import disk
from sklearn.cluster import KMeans

from nucleate.pseudomask import BACKGROUND, IGNORE, NUCLEUS, PRESETS, from_points
from nucleate.pseudomask.geometry import disk_footprint

QU = PRESETS["qu2019"]


def test_constants_in_pixels_at_r_10():
    assert QU.nucleus_radius_px == 10
    pixels = {name: QU.px(name) for name in ("point_radius", "distance_clip", "overlap_radius", "dilate", "erode",
                                             "background_margin")}
    assert pixels == pytest.approx({"point_radius": 2, "distance_clip": 20, "overlap_radius": 5, "dilate": 5,
                                    "erode": 7, "background_margin": 10})
    assert QU.area_px("min_area") == pytest.approx(30)
    assert QU.distance_weight == pytest.approx(20 / 25.5)  # distance range 0..20 vs colour range 0..25.5
    assert (QU.refine, QU.keep_unclicked, QU.method) == ("per_cell", True, "voronoi_cluster")
    for name, n in pixels.items():  # every disk is skimage's disk(n): the pixels within n px
        if name != "distance_clip":
            np.testing.assert_array_equal(disk_footprint(QU.px(name)), morphology.disk(round(n)).astype(bool))
    assert [int(disk_footprint(n).sum()) for n in (2, 5, 7, 10)] == [13, 81, 149, 317]


def test_point_disk_is_disk_2():
    image = np.zeros((40, 40), np.uint8)
    pm = from_points(image, [[20.5, 20.5]], "voronoi", params=QU)
    np.testing.assert_array_equal(pm.voronoi[18:23, 18:23] == NUCLEUS, morphology.disk(2).astype(bool))
    assert (pm.voronoi == NUCLEUS).sum() == 13


def qu_labels(image: np.ndarray, points_rc: list[tuple[int, int]]):
    """Qu et al.'s create_Voronoi_label + create_cluster_label, step by step with their library calls.

    Voronoi cells: each pixel's nearest point (Qu rasterise scipy's Voronoi polygons, which is the same
    when no pixel is equidistant from two points - asserted). Returns ((vor_red, vor_green),
    (cluster_red, cluster_green)) as bool maps: red = background, green = nucleus.
    """
    h, w = image.shape[:2]
    rr, cc = np.mgrid[:h, :w]
    pr, pc = np.asarray(points_rc).T
    d2 = (rr[..., None] - pr) ** 2 + (cc[..., None] - pc) ** 2
    nearest_two = np.sort(d2, axis=-1)[..., :2]
    assert (nearest_two[..., 0] < nearest_two[..., 1]).all(), "a pixel is equidistant from two points"
    cells = np.argmin(d2, axis=-1) + 1
    label_point = np.zeros((h, w), np.uint8)
    label_point[pr, pc] = 255

    edges = np.zeros((h, w), bool)  # create_Voronoi_label
    for k in range(1, len(pr) + 1):
        mask = cells == k
        edges |= mask & ~morphology.erosion(mask, morphology.disk(1))
    vor_green = morphology.dilation(label_point, morphology.disk(2)) > 0

    dist = ndi.distance_transform_edt(255 - label_point).reshape(-1, 1)  # create_cluster_label
    embeddings = np.concatenate([image.reshape(-1, 3).astype(float) / 10, np.clip(dist, 0, 20)], axis=1)
    clusters = KMeans(n_clusters=3, random_state=0, n_init=10).fit(embeddings).labels_.reshape(h, w)
    nuclei_idx = int(np.argmax([np.sum((clusters == i) * label_point) for i in range(3)]))
    remain = np.delete(np.arange(3), nuclei_idx)
    dilated_points = morphology.dilation(label_point > 0, morphology.disk(5))
    background_idx = remain[np.argmin([np.sum((clusters == i) * dilated_points) for i in remain])]
    blobs = measure.label(clusters == nuclei_idx)
    # remove_small_objects(blobs, 30) as of 2019 (skimage < 0.26): drops objects of fewer than 30 px
    initial = (np.bincount(blobs.ravel()) >= 30)[blobs] & (blobs > 0)
    refined = np.zeros((h, w), bool)
    voronoi_cells = morphology.dilation(measure.label(~edges), morphology.disk(2))
    for i in np.unique(voronoi_cells[voronoi_cells > 0]):
        nucleus_i = (voronoi_cells == i) & initial
        nucleus_i = morphology.dilation(nucleus_i, morphology.disk(5))
        nucleus_i = ndi.binary_fill_holes(nucleus_i)
        refined |= morphology.erosion(nucleus_i, morphology.disk(7))
    far = morphology.dilation(label_point, morphology.disk(10)) == 0
    return (edges, vor_green), ((clusters == background_idx) & ~refined & far, refined)


def scene():
    """RGB nuclei on background: two touching clicked nuclei, a small clicked one (radius 4 < disk(5)), a
    large clicked one, an unclicked one, and unclicked debris of exactly 30 px (kept) and 29 px (dropped)."""
    h, w = 72, 96
    labels = np.zeros((h, w), np.int32)
    for k, (r, c, radius) in enumerate([(20, 20, 8), (20, 37, 9), (50, 25, 4), (48, 70, 9), (18, 75, 6)], 1):
        labels[disk((r, c), radius, shape=(h, w))] = k
    labels[62:67, 84:90] = 6  # 30 px
    labels[62:67, 6:12] = 7  # 29 px
    labels[62, 6] = 0
    image = np.where((labels > 0)[..., None], np.uint8([255, 140, 0]), np.uint8([0, 10, 255]))
    points_rc = [(19, 19), (19, 38), (50, 25), (47, 69)]  # inside the first four; no pixel equidistant
    return image, labels, points_rc


def encode(red: np.ndarray, green: np.ndarray) -> np.ndarray:
    out = np.full(red.shape, IGNORE, np.uint8)
    out[red] = BACKGROUND
    out[green] = NUCLEUS  # LabelEncoding: green (nucleus) is written after red (background)
    return out


def test_qu2019_reproduces_prepare_data_labels():
    image, labels, points_rc = scene()
    (vor_red, vor_green), (clu_red, clu_green) = qu_labels(image, points_rc)
    points = np.array([[c + 0.5, r + 0.5] for r, c in points_rc])
    pm = from_points(image, points, params=QU)
    np.testing.assert_array_equal(pm.voronoi, encode(vor_red, vor_green))
    np.testing.assert_array_equal(pm.cluster, encode(clu_red, clu_green))
    # the scene exercises each rule: touching nuclei cut apart, the unclicked nucleus and the 30 px blob kept
    # (as nuclei of their own), the 29 px blob dropped. (The background cluster starts ~15 px from the points
    # here, so the disk(10) margin is checked by its size above, not by this scene.)
    assert pm.n_points == 4 and pm.n_unclicked == 2
    assert (pm.cluster[labels == 5] == NUCLEUS).mean() > 0.4 and (pm.cluster[labels == 6] == NUCLEUS).any()
    assert not (pm.cluster[labels == 7] == NUCLEUS).any()
    for change in ({"refine": "labels"}, {"keep_unclicked": False}, {"min_area": 0.29}, {"min_area": 0.31},
                   {"erode": 0.6}, {"point_radius": 0.25}):
        other = from_points(image, points, params=dataclasses.replace(QU, **change))
        assert (other.cluster != pm.cluster).any() or (other.voronoi != pm.voronoi).any(), change
