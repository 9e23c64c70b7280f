"""nucleate.pseudomask.presets: PRESETS["qu2019"] against a transcription of Qu et al.'s prepare_data.py."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import measure, morphology
from skimage.draw import disk
from sklearn.cluster import KMeans

from nucleate.pseudomask import BACKGROUND, IGNORE, NUCLEUS, PRESETS, from_points
from nucleate.pseudomask import points as points_module
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
    """Qu et al.'s label recipe (methods.md 3.1; prepare_data.py), written out independently of nucleate with
    the same scikit-image / scipy / scikit-learn operations. Returns ((vor_bg, vor_nucleus), (clu_bg,
    clu_nucleus)) as bool maps, and the k-means clusters (H, W).

    Voronoi cells here are each pixel's nearest point; Qu rasterise scipy's Voronoi polygons, which is the
    same when no pixel is equidistant from two points (asserted).
    """
    h, w = image.shape[:2]
    pr, pc = np.asarray(points_rc).T
    grid_r, grid_c = np.indices((h, w))
    sq = (grid_r[..., None] - pr) ** 2 + (grid_c[..., None] - pc) ** 2
    first, second = np.sort(sq, axis=-1)[..., :2].transpose(2, 0, 1)
    assert (first < second).all(), "a pixel is equidistant from two points"
    owner = sq.argmin(axis=-1) + 1
    clicked = np.zeros((h, w), bool)
    clicked[pr, pc] = True

    # Voronoi label: every cell's own 1-px rim (erosion by disk(1)) is background, disk(2) around a click nucleus
    rim = np.zeros((h, w), bool)
    for cell in range(1, len(pr) + 1):
        inside = owner == cell
        rim |= inside & ~morphology.erosion(inside, morphology.disk(1))
    vor_nucleus = morphology.dilation(clicked, morphology.disk(2))

    # cluster label: k = 3 on [RGB / 10, distance to the nearest click clipped at 20]
    to_click = np.minimum(ndi.distance_transform_edt(~clicked), 20)
    feats = np.column_stack([image.reshape(-1, 3) / 10.0, to_click.ravel()])
    k = KMeans(n_clusters=3, random_state=0, n_init=10).fit_predict(feats).reshape(h, w)
    nuc = np.bincount(k[clicked], minlength=3).argmax()
    around = np.bincount(k[morphology.dilation(clicked, morphology.disk(5))], minlength=3).astype(float)
    around[nuc] = np.inf
    bg = around.argmin()
    blobs = measure.label(k == nuc)  # 8-connected
    # remove_small_objects(blobs, 30) as of 2019 (scikit-image < 0.26): objects under 30 px go
    big = (np.bincount(blobs.ravel()) >= 30)[blobs] & (blobs > 0)
    cells = morphology.dilation(measure.label(~rim), morphology.disk(2))
    nuclei = np.zeros((h, w), bool)
    for cell in np.unique(cells[cells > 0]):  # each cell's nuclei closed on their own, then united
        grown = ndi.binary_fill_holes(morphology.dilation(big & (cells == cell), morphology.disk(5)))
        nuclei |= morphology.erosion(grown, morphology.disk(7))
    far = ~morphology.dilation(clicked, morphology.disk(10))
    return (rim, vor_nucleus), ((k == bg) & ~nuclei & far, nuclei), k


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
    labels[58:63, 46:51] = 8  # two 25 px squares meeting at a corner: one 50 px blob when 8-connected
    labels[63:68, 51:56] = 8
    labels[disk((42, 1), 6, shape=(h, w))] = 9  # clicked, cut by the image border (which does not erode)
    image = np.where((labels > 0)[..., None], np.uint8([255, 140, 0]), np.uint8([0, 10, 255]))
    points_rc = [(19, 19), (19, 38), (50, 25), (47, 69), (42, 2)]  # no pixel equidistant
    return image, labels, points_rc


def encode(background: np.ndarray, nucleus: np.ndarray) -> np.ndarray:
    out = np.full(background.shape, IGNORE, np.uint8)
    out[background] = BACKGROUND
    out[nucleus] = NUCLEUS  # Qu's LabelEncoding: nucleus wins where both are set
    return out


def test_qu2019_reproduces_prepare_data_labels(monkeypatch):
    image, labels, points_rc = scene()
    (vor_bg, vor_nucleus), (clu_bg, clu_nucleus), clusters = qu_labels(image, points_rc)
    points = np.array([[c + 0.5, r + 0.5] for r, c in points_rc])
    own = from_points(image, points, params=QU)  # our own k-means fit
    np.testing.assert_array_equal(own.voronoi, encode(vor_bg, vor_nucleus))
    np.testing.assert_array_equal(own.cluster == NUCLEUS, clu_nucleus)
    # k-means itself is not bit-identical (scikit-learn version, n_init, float32: the near/far background split
    # can move by a pixel); given Qu's clusters, every rule after it is
    monkeypatch.setattr(points_module, "_kmeans3", lambda feats, sample, seed: clusters.ravel().astype(np.int8))
    pm = from_points(image, points, params=QU)
    np.testing.assert_array_equal(pm.cluster, encode(clu_bg, clu_nucleus))
    np.testing.assert_array_equal(pm.voronoi, own.voronoi)
    # the scene exercises each rule: touching nuclei cut apart, the unclicked nucleus and the 30 px blob kept
    # (as nuclei of their own), the 29 px blob dropped, the corner-joined squares kept as one 8-connected blob,
    # the nucleus on the image border not eroded from the border. (The background cluster starts ~15 px from
    # the points here, so the disk(10) margin is checked by its size above, not by this scene.)
    assert pm.n_points == 5 and pm.n_unclicked == 3
    assert (pm.cluster[labels == 5] == NUCLEUS).mean() > 0.4 and (pm.cluster[labels == 6] == NUCLEUS).any()
    assert not (pm.cluster[labels == 7] == NUCLEUS).any() and (pm.cluster[labels == 8] == NUCLEUS).any()
    assert (pm.cluster[:, 0] == NUCLEUS).any()
    for change in ({"refine": "labels"}, {"keep_unclicked": False}, {"min_area": 0.29}, {"min_area": 0.31},
                   {"erode": 0.6}, {"point_radius": 0.25}):
        other = from_points(image, points, params=dataclasses.replace(QU, **change))
        assert (other.cluster != pm.cluster).any() or (other.voronoi != pm.voronoi).any(), change
