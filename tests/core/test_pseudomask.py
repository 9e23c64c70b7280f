"""nucleate.pseudomask.from_points: synthetic disks with known answers, a real sample image, bad input."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk, ellipse

from nucleate.annotations import centroids_xy
from nucleate.config import PseudomaskParams, load_params
from nucleate.io import read_image, read_labels
from nucleate.metrics import dice, segmentation_scores
from nucleate.pseudomask import BACKGROUND, IGNORE, METHODS, NUCLEUS, PRESETS, PointError, from_points

REPO = Path(__file__).resolve().parents[2]


def touching_disks(radius=12, shape=(64, 96), noise=4.0, seed=0):
    """Two bright disks that touch at one column, on a dark noisy background; GT labels and (x, y) centres."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    centres = [(32, 30), (32, 30 + 2 * radius)]
    for k, (r, c) in enumerate(centres, 1):
        labels[disk((r, c), radius + 0.5, shape=shape)] = k
    image = np.where(labels > 0, 180.0, 30.0) + rng.normal(0, noise, shape)
    points = np.array([[c + 0.5, r + 0.5] for r, c in centres])
    return np.clip(image, 0, 255).astype(np.uint8), labels, points


@pytest.mark.parametrize("method", ["cluster", "voronoi_cluster"])
def test_two_touching_disks_give_two_instances(method):
    image, labels, points = touching_disks()
    pm = from_points(image, points, method, nucleus_radius_px=12, keep_unclicked=False)
    assert pm.n_points == 2 and pm.n_instances == 2
    assert pm.point_ids.tolist() == [1, 2]
    scores = segmentation_scores(labels, pm.instances)
    assert scores.pq.tp == 2 and scores.aji > 0.6  # Qu's refinement shrinks nuclei by ~0.2 r
    for k in (1, 2):  # each instance lies inside its own disk
        assert (labels[pm.instances == k] == k).mean() > 0.97
    assert set(np.unique(pm.semantic)) <= {BACKGROUND, NUCLEUS, IGNORE}
    assert ((pm.instances > 0) == (pm.semantic == NUCLEUS)).all()
    labeled = pm.semantic != IGNORE
    assert dice(labels, pm.semantic == NUCLEUS, valid=labeled) > 0.97
    assert (pm.semantic[labels == 0] == NUCLEUS).mean() < 0.01


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("method", METHODS)
def test_invariants_on_random_scenes(method, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(20, 90, 2))
    image = rng.integers(0, 2**16, shape, dtype=np.uint16) if seed % 2 else rng.integers(0, 256, (*shape, 3), np.uint8)
    points = rng.uniform(0, 1, (int(rng.integers(1, 25)), 2)) * [shape[1], shape[0]]
    keep = bool(seed % 2)
    pm = from_points(image, points, method, nucleus_radius_px=float(rng.uniform(2, 8)), seed=seed,
                     keep_unclicked=keep)
    assert pm.semantic.shape == pm.instances.shape == pm.voronoi.shape == shape
    assert pm.semantic.dtype == pm.voronoi.dtype == np.uint8 and pm.instances.dtype == np.int32
    maps = [pm.semantic, pm.voronoi] + ([] if method == "voronoi" else [pm.cluster])
    assert (pm.cluster is None) == (method == "voronoi")
    for m in maps:
        assert m.shape == shape and m.dtype == np.uint8 and set(np.unique(m)) <= {BACKGROUND, NUCLEUS, IGNORE}
    assert ((pm.instances > 0) == (pm.semantic == NUCLEUS)).all()
    assert pm.n_points <= len(points)
    assert pm.instances.max() <= pm.n_points + pm.n_unclicked and (pm.n_unclicked == 0 or keep)
    if method == "voronoi":
        np.testing.assert_array_equal(pm.semantic, pm.voronoi)
    elif method == "cluster":
        np.testing.assert_array_equal(pm.semantic, pm.cluster)
    else:  # the combined map: either label's background is background, and nuclei never sit on a boundary
        assert (pm.semantic[(pm.voronoi == BACKGROUND) | (pm.cluster == BACKGROUND)] != IGNORE).all()
        assert (pm.semantic[pm.voronoi == BACKGROUND] == BACKGROUND).mean() > 0.5
        assert (pm.semantic[(pm.voronoi == NUCLEUS)] == NUCLEUS).all()
    # different instances never touch (4-neighbourhood)
    a, b = pm.instances[:, 1:], pm.instances[:, :-1]
    assert not ((a != b) & (a > 0) & (b > 0)).any()
    a, b = pm.instances[1:], pm.instances[:-1]
    assert not ((a != b) & (a > 0) & (b > 0)).any()
    if method != "cluster":  # every point's own pixel is its nucleus
        r = np.minimum(points[:, 1].astype(int), shape[0] - 1)
        c = np.minimum(points[:, 0].astype(int), shape[1] - 1)
        assert (pm.instances[r, c] == pm.point_ids).all() and (pm.point_ids > 0).all()


def test_voronoi_label_hand_checked():
    image = np.zeros((20, 30), np.uint8)
    points = np.array([[5.5, 10.5], [24.5, 10.5]])  # pixel centres (row 10, cols 5 and 24)
    pm = from_points(image, points, "voronoi", nucleus_radius_px=8, point_radius=0.25)  # 2 px disks
    cols_bg = np.flatnonzero((pm.semantic == BACKGROUND).all(0))
    assert cols_bg.tolist() == [14, 15]  # the bisector between columns 5 and 24, 2 px wide
    assert (pm.semantic[:, :14] != BACKGROUND).all()
    nucleus = np.argwhere(pm.instances == 1)
    assert len(nucleus) == 13  # a radius-2 digital disk
    assert np.abs(nucleus - [10, 5]).max() == 2
    assert pm.instances[10, 24] == 2 and pm.n_instances == 2
    rest = (pm.semantic != BACKGROUND) & (pm.semantic != NUCLEUS)
    assert (pm.semantic[rest] == IGNORE).all() and rest.sum() == 20 * 30 - 40 - 26


def test_point_convention_corner_origin():
    image = np.zeros((10, 12), np.uint8)
    pm = from_points(image, [[3.99, 7.0], [12.0, 10.0]], "voronoi", nucleus_radius_px=1, point_radius=0.1)
    assert pm.instances[7, 3] == 1  # x = column 3, y = row 7
    assert pm.instances[9, 11] == 2  # the far corner (x = W, y = H) is the last pixel


def test_no_points_gives_all_ignore():
    image = np.full((16, 16), 7, np.uint16)
    for method in METHODS:
        pm = from_points(image, np.zeros((0, 2)), method)
        assert (pm.semantic == IGNORE).all() and (pm.voronoi == IGNORE).all() and not pm.instances.any()
        assert pm.cluster is None if method == "voronoi" else (pm.cluster == IGNORE).all()
        assert pm.n_points == 0 and pm.n_instances == 0 and pm.point_ids.shape == (0,)


def test_duplicate_points_collapse():
    image, _, points = touching_disks()
    dup = np.array([points[0], points[1], points[0] + 0.3, points[1]])  # same pixels
    pm = from_points(image, dup, nucleus_radius_px=12)
    ref = from_points(image, points, nucleus_radius_px=12)
    assert pm.n_points == 2 and pm.point_ids.tolist() == [1, 2, 1, 2]
    np.testing.assert_array_equal(pm.instances, ref.instances)
    np.testing.assert_array_equal(pm.semantic, ref.semantic)


@pytest.mark.parametrize(
    "points, index, words",
    [
        ([[5.0, 5.0], [96.5, 5.0]], 1, "outside the 96x64 image"),
        ([[5.0, -0.1]], 0, "outside"),
        ([[5.0, 5.0], [1.0, 1.0], [np.nan, 3.0]], 2, "not a finite number"),
        ([[np.inf, 3.0]], 0, "not a finite number"),
    ],
)
def test_bad_points_name_the_point(points, index, words):
    image, _, _ = touching_disks()
    with pytest.raises(PointError, match=f"point {index} .*{words}") as err:
        from_points(image, np.array(points))
    assert err.value.index == index


def test_bad_arguments():
    image, _, points = touching_disks()
    with pytest.raises(ValueError, match="unknown pseudo-mask method 'watershed'"):
        from_points(image, points, "watershed")
    with pytest.raises(ValueError, match="unknown pseudo-mask option.*radius_px"):
        from_points(image, points, radius_px=3)
    with pytest.raises(ValueError, match="pseudomask.nucleus_radius_px: must be > 0"):
        from_points(image, points, nucleus_radius_px=0)
    with pytest.raises(ValueError, match="pseudomask.dilate: expected a number"):
        from_points(image, points, dilate=float("nan"))
    with pytest.raises(ValueError, match="pseudomask.refine: must be one of labels, per_cell"):
        from_points(image, points, refine="both")
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        from_points(image, points, seed=-1)
    with pytest.raises(ValueError, match="PseudomaskParams"):
        from_points(image, points, params={"nucleus_radius_px": 3})
    with pytest.raises(ValueError, match="shape"):
        from_points(np.zeros((4, 4, 2), np.uint8), points)
    with pytest.raises(ValueError, match="dtype"):
        from_points(np.zeros((4, 4), bool), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="shape"):
        from_points(image, np.zeros((2, 3)))


def test_16_bit_and_rgb_images():
    image, labels, points = touching_disks()
    gray = from_points(image, points, nucleus_radius_px=12)
    wide = from_points(image.astype(np.uint16) * 257 + 1000, points, nucleus_radius_px=12)
    np.testing.assert_array_equal(gray.instances, wide.instances)  # percentile scaling: bit depth irrelevant
    rgb = np.stack([image, image // 2, 255 - image], -1)  # coloured, nuclei dark in one channel (like H&E)
    pm = from_points(rgb, points, nucleus_radius_px=12)
    assert pm.n_instances == 2 and segmentation_scores(labels, pm.instances).pq.tp == 2


def test_deterministic_for_a_seed():
    image, _, points = touching_disks(noise=30.0)
    a = from_points(image, points, "cluster", nucleus_radius_px=12, seed=3, sample_pixels=500)
    b = from_points(image, points, "cluster", nucleus_radius_px=12, seed=3, sample_pixels=500)
    np.testing.assert_array_equal(a.semantic, b.semantic)
    np.testing.assert_array_equal(a.instances, b.instances)


def test_unclicked_nucleus_is_ignored_or_kept_apart():
    """A nucleus nobody clicked, in the clicked one's Voronoi cell: ignore, or its own id with keep_unclicked."""
    rng = np.random.default_rng(2)
    labels = np.zeros((64, 110), np.int32)
    labels[disk((32, 30), 12.5)] = 1
    labels[disk((32, 75), 12.5)] = 2  # nobody clicked it
    cytoplasm = np.zeros(labels.shape, bool)
    cytoplasm[ellipse(32, 52, 28, 50, shape=labels.shape)] = True  # three intensity levels, as in real cells
    base = np.where(labels > 0, 200.0, np.where(cytoplasm, 110.0, 30.0))
    image = np.clip(base + rng.normal(0, 4, labels.shape), 0, 255).astype(np.uint8)
    for method in ("cluster", "voronoi_cluster"):
        opts = {"nucleus_radius_px": 12, "distance_weight": 0.8}
        pm = from_points(image, [[30.5, 32.5]], method, keep_unclicked=False, **opts)
        assert pm.n_instances == 1 and pm.n_unclicked == 0
        assert (pm.semantic[labels == 2] == IGNORE).mean() > 0.95  # not background, not a second instance
        assert (labels[pm.instances == 1] == 1).all()
        kept = from_points(image, [[30.5, 32.5]], method, keep_unclicked=True, **opts)
        assert kept.n_instances == 2 and kept.n_unclicked == 1 and kept.point_ids.tolist() == [1]
        assert (kept.instances[labels == 2] == 2).mean() > 0.9  # a nucleus of its own, id n_points + 1
        assert (labels[kept.instances == 2] == 2).all()
        np.testing.assert_array_equal(kept.instances == 1, pm.instances == 1)  # the clicked one is unchanged
        assert (kept.cluster[labels == 2] == NUCLEUS).mean() > 0.9


def test_default_options_are_the_params_file():
    """One home for defaults: no options = the shipped params.yaml, not some library constants."""
    image, _, points = touching_disks(noise=20.0)
    shipped = load_params(REPO / "params.yaml").pseudomask
    plain = from_points(image, points)
    explicit = from_points(image, points, params=shipped)
    spelled = from_points(image, points, **dataclasses.asdict(shipped))  # every field as an option
    for other in (explicit, spelled):
        for name in ("semantic", "instances", "voronoi", "cluster"):
            np.testing.assert_array_equal(getattr(plain, name), getattr(other, name))
    qu = from_points(image, points, params=PRESETS["qu2019"])
    assert (qu.voronoi != plain.voronoi).any()  # the comparison can tell settings apart
    override = from_points(image, points, params=shipped, method="voronoi", nucleus_radius_px=4.0)
    assert override.method == "voronoi" and (override.voronoi == NUCLEUS).sum() < (plain.voronoi == NUCLEUS).sum()


@pytest.mark.parametrize("offset", [(2, 0), (3, 0), (4, 0), (0, 2), (2, 2), (3, 1), (1, 3), (3, 3), (4, 2)])
def test_clicks_a_few_pixels_apart_keep_a_boundary(offset):
    """Two clicks 2-4 px apart: the plain Voronoi label keeps background between them and both instances."""
    image = np.zeros((30, 30), np.uint8)
    a = np.array([12, 12])
    b = a + offset
    points = np.array([[a[1] + 0.5, a[0] + 0.5], [b[1] + 0.5, b[0] + 0.5]])
    pm = from_points(image, points, "voronoi", nucleus_radius_px=10, point_radius=0.3)  # 3 px disks
    assert pm.point_ids.tolist() == [1, 2] and pm.instances[tuple(a)] == 1 and pm.instances[tuple(b)] == 2
    # the cell boundary whichever cell the equidistant pixels join: pixels nearer one click with a 4-neighbour
    # nearer the other, and equidistant pixels between two such
    rr, cc = np.mgrid[:30, :30]
    da = (rr - a[0]) ** 2 + (cc - a[1]) ** 2
    db = (rr - b[0]) ** 2 + (cc - b[1]) ** 2
    near_a, near_b = (da < db), (db < da)
    by_a, by_b = (ndi.binary_dilation(m, ndi.generate_binary_structure(2, 1)) for m in (near_a, near_b))
    sure = (near_a & by_b) | (near_b & by_a) | ((da == db) & by_a & by_b)
    sure[tuple(a)] = sure[tuple(b)] = False  # a clicked pixel stays its own nucleus
    assert sure.any() and (pm.voronoi[sure] == BACKGROUND).all()
    # point disks never cover a boundary: every nucleus pixel but the clicks has no 4-neighbour in another instance
    inst = pm.instances
    for p, q in ((inst[:, 1:], inst[:, :-1]), (inst[1:], inst[:-1])):
        assert not ((p != q) & (p > 0) & (q > 0)).any()
    # and the segment between the two clicks crosses background
    steps = np.linspace(0, 1, 50)[1:-1]
    line = np.unique(np.floor(a + 0.5 + np.outer(steps, b - a)).astype(int), axis=0)
    assert (pm.voronoi[line[:, 0], line[:, 1]] == BACKGROUND).any()


def test_min_area_is_a_multiple_of_r_squared():
    """A nucleus-cluster blob of exactly min_area x r^2 pixels is kept, one pixel less is dropped."""
    image = np.full((40, 80), 20, np.uint8)
    image[10:15, 10:16] = 230  # a clicked 30 px blob
    image[25:30, 50:56] = 230  # an unclicked 30 px blob
    image[25, 50] = 20  # ... made 29 px
    points = [[13.5, 12.5]]
    base = PseudomaskParams(nucleus_radius_px=10, min_area=0.3, dilate=0.0, erode=0.0, keep_unclicked=True,
                            method="cluster", distance_weight=0.2)
    kept = from_points(image, points, params=base)
    assert (kept.instances[10:15, 10:16] == 1).all() and not kept.instances[25:30, 50:56].any()
    looser = from_points(image, points, params=dataclasses.replace(base, min_area=0.29))
    assert (looser.instances[25:30, 50:56] == 2).sum() == 29
    stricter = from_points(image, points, params=dataclasses.replace(base, min_area=0.31))
    assert not stricter.instances[10:15, 10:16].any()


# measured on this image with the params.yaml settings: labeled-pixel Dice 0.973, whole-image Dice 0.930,
# AJI 0.866, 64 % of pixels labeled; the floors leave ~0.05 of slack
FLOOR = {"labeled_dice": 0.92, "whole_dice": 0.88, "whole_aji": 0.82, "coverage": 0.6}


def test_real_sample_image_quality_floor(sample_dir):
    name = "2022-03-18_RPE1_3.tif"
    image = read_image(sample_dir / "images" / "pool" / name)
    gt = read_labels(sample_dir / "masks" / "pool" / name)
    _, points = centroids_xy(gt)
    pm = from_points(image, points)  # the params.yaml settings
    assert pm.n_instances - pm.n_unclicked == len(points)
    labeled = pm.semantic != IGNORE
    whole = segmentation_scores(gt, pm.instances)
    assert dice(gt, pm.semantic == NUCLEUS, valid=labeled) >= FLOOR["labeled_dice"]
    assert whole.dice >= FLOOR["whole_dice"] and whole.aji >= FLOOR["whole_aji"]
    assert labeled.mean() >= FLOOR["coverage"]
