"""Point -> pseudo-mask priors of Qu et al. (MIDL 2019): the Voronoi label, the cluster label, and both.

``from_points(image, points)`` turns one click per nucleus into training masks. Every map is (H, W):

* ``voronoi`` uint8 - Qu's Voronoi label: 0 = background (cell boundaries), 1 = nucleus (point disks),
  255 = ignore;
* ``cluster`` uint8 - Qu's cluster label: 0 = background cluster, 1 = refined nuclei, 255 = ignore
  (``None`` for ``method="voronoi"``, which skips the k-means);
* ``semantic`` uint8 - the map of ``method``: one of the two, or both combined (``voronoi_cluster``);
* ``instances`` int32 - 0 = none, ``i`` (1..n) = the nucleus of unique point ``i`` (in order of first
  appearance; points in the same pixel collapse), ``n + 1, n + 2, ...`` = nucleus-cluster blobs nobody
  clicked, in raster order (only with ``keep_unclicked``). ``instances > 0`` exactly where ``semantic`` is 1.

Qu et al. train on ``voronoi`` and ``cluster`` as two losses (L_vor + L_cluster); ``semantic`` of
``voronoi_cluster`` fuses them into one map (background = either background; nucleus = refined nuclei or
point disks, never on a cell boundary) for a single-loss trainer and for QC.

Hyper-parameters are a :class:`nucleate.config.PseudomaskParams` (the params.yaml values unless given):
lengths are multiples of ``nucleus_radius_px`` = r, ``min_area`` of r². A disk of radius d px is every
pixel whose centre lies within d px (``skimage.morphology.disk(d)`` for an integer d). Qu et al.'s own
constants are the preset ``nucleate.pseudomask.PRESETS["qu2019"]``.

* Voronoi label - the pixel Voronoi partition of the points (nearest point, Euclidean, pixel centres);
  each cell's 1-px inner boundary (a 4-neighbour in another cell) is background, so boundaries are 2 px
  wide; a disk of ``point_radius``·r around each point is nucleus, except on a boundary (the point's own
  pixel always stays nucleus, so clicks 2 px apart keep both their instances and a background pixel
  between them); everything else is ignore.
* Cluster label - k-means (k = 3) on [intensity or colour scaled to [0, 1] by the 0.5 / 99.5 percentiles,
  distance to the nearest point clipped at ``distance_clip``·r and scaled to [0, ``distance_weight``]],
  fitted on ``sample_pixels`` pixels. The cluster holding most points is nucleus; of the other two, the
  one overlapping least with disks of ``overlap_radius``·r is background (on a tie, the one whose mean
  feature vector lies farthest from the nucleus cluster's). Nucleus-cluster blobs
  (8-connected) of fewer than ``min_area``·r² pixels are dropped; the rest are refined per Voronoi cell:
  dilate by ``dilate``·r, fill holes, erode by ``erode``·r (the image border does not erode). ``refine``
  = ``labels``: one label-aware closing, neighbouring nuclei never merge and stay >= 2 px apart;
  ``per_cell``: Qu's independent closing of each cell's part (cells = the non-boundary pixels of each cell
  grown by disk(2), boundary pixels going to the higher-numbered cell, as ``create_cluster_label``), whose
  union may join neighbours. A refined blob touching its own point's disk is that point's nucleus; other
  blobs (unclicked nuclei, debris) are nuclei of their own with ``keep_unclicked`` (Qu) and ignore
  without. Background is the background cluster outside the nuclei and farther than
  ``background_margin``·r from every point.

An image with no points gives all-ignore maps and no instances (nothing is known about it). Images:
(H, W) gray or (H, W, 3) RGB, uint8 / uint16 (or float). Deterministic for a given ``seed``, whatever the
number of CPU cores (the k-means runs on one thread). Cost is
O(pixels) for ``refine: labels`` (Voronoi cells and morphology are distance-transform propagations);
``per_cell`` loops over cells on cropped windows.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as label_components
from threadpoolctl import threadpool_limits

from nucleate.config import PseudomaskParams
from nucleate.io.images import STRETCH_PERCENTILES, percentile_stretch
from nucleate.pseudomask.geometry import (
    PointError,
    cell_edges,
    disk_footprint,
    label_closing,
    seed_pixels,
    squared_radius,
    voronoi,
)

__all__ = [
    "BACKGROUND",
    "IGNORE",
    "METHODS",
    "NUCLEUS",
    "PointError",
    "PseudoMask",
    "from_points",
    "resolve_params",
]

BACKGROUND, NUCLEUS, IGNORE = 0, 1, 255
METHODS = ("voronoi", "cluster", "voronoi_cluster")
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity, as skimage.measure.label's default in Qu's code


@dataclass(frozen=True)
class PseudoMask:
    """Pseudo-masks of one image (see the module docstring for every map).

    ``point_ids`` (K,) int32 gives, for every input point, its instance id in ``instances`` (points in the
    same pixel share one; 0 if the point's nucleus has no pixel, which cannot happen for ``voronoi`` and
    ``voronoi_cluster``). ``n_points`` counts unique points.
    """

    semantic: np.ndarray
    instances: np.ndarray
    voronoi: np.ndarray
    cluster: np.ndarray | None
    method: str
    point_ids: np.ndarray
    n_points: int

    @property
    def n_instances(self) -> int:
        """Number of distinct instance ids present in ``instances`` (clicked and unclicked)."""
        present = np.bincount(self.instances.ravel(), minlength=self.n_points + 1)[1:] > 0
        return int(present.sum())

    @property
    def n_unclicked(self) -> int:
        """Instances nobody clicked (ids > ``n_points``; only with ``keep_unclicked``)."""
        present = np.bincount(self.instances.ravel(), minlength=self.n_points + 1)[self.n_points + 1 :] > 0
        return int(present.sum())


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)) or 0 in image.shape:
        raise ValueError(f"image must be (H, W) gray or (H, W, 3) RGB with pixels; got shape {image.shape}")
    if image.dtype.kind not in "uif" or image.dtype == bool:
        raise ValueError(f"image must hold 8/16-bit integers (or floats); got dtype {image.dtype}")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise ValueError("image holds NaN or infinite pixel values; fix or mask them before making pseudo-masks")
    return image


def resolve_params(
    params: PseudomaskParams | None = None, method: str | None = None, **overrides
) -> PseudomaskParams:
    """``params`` (default: ``PseudomaskParams()``, the params.yaml values) with ``method`` and the
    ``overrides`` (field names of :class:`PseudomaskParams`) applied; ``ValueError`` names a bad one."""
    base = PseudomaskParams() if params is None else params
    if not isinstance(base, PseudomaskParams):
        raise ValueError(f"params must be a nucleate.config.PseudomaskParams, got {type(base).__name__}")
    if method is not None:
        overrides["method"] = method
    known = {f.name for f in dataclasses.fields(PseudomaskParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown pseudo-mask option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if "method" in overrides and overrides["method"] not in METHODS:
        raise ValueError(f"unknown pseudo-mask method {overrides['method']!r}; choose one of {', '.join(METHODS)}")
    return dataclasses.replace(base, **overrides) if overrides else base


def from_points(
    image: np.ndarray,
    points: np.ndarray,
    method: str | None = None,
    *,
    params: PseudomaskParams | None = None,
    seed: int = 0,
    **overrides,
) -> PseudoMask:
    """Pseudo-masks of ``image`` from one point per nucleus (see the module docstring).

    ``image``: (H, W) or (H, W, 3); ``points``: (K, 2) float (x, y) pixels, x = column, origin at the
    top-left corner of the top-left pixel (its centre is (0.5, 0.5)). ``params``: the hyper-parameters
    (default ``PseudomaskParams()`` = params.yaml; ``PRESETS["qu2019"]`` for Qu et al.'s constants);
    ``method`` and ``overrides`` (field names, e.g. ``nucleus_radius_px=12``) replace single fields.
    ``seed`` (>= 0) seeds the k-means pixel subsample and initialisation.

    Raises :class:`PointError` (a ``ValueError`` with ``.index``) for a NaN/infinite point or one
    outside the image, ``ValueError`` for an unknown method/option, a bad value or a bad image.
    """
    p = resolve_params(params, method, **overrides)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    image = _check_image(image)
    shape = image.shape[:2]
    rows, cols, point_ids = seed_pixels(points, shape)
    n = rows.size
    ignore = np.full(shape, IGNORE, dtype=np.uint8)
    instances = np.zeros(shape, dtype=np.int32)
    if n == 0:
        cluster = None if p.method == "voronoi" else ignore.copy()
        return PseudoMask(ignore.copy(), instances, ignore, cluster, p.method, point_ids, 0)

    cells, d2 = voronoi(rows, cols, shape)
    seeds = np.zeros(shape, dtype=bool)
    seeds[rows, cols] = True
    disk = d2 <= squared_radius(p.px("point_radius"))
    edges = cell_edges(cells)

    vor_nucleus = (disk & ~edges) | seeds
    vor = ignore.copy()
    vor[edges] = BACKGROUND
    vor[vor_nucleus] = NUCLEUS

    if p.method == "voronoi":
        instances[vor_nucleus] = cells[vor_nucleus]
        return _finish(vor, instances, vor, None, p.method, point_ids, n)

    nuclei, background = _cluster_labels(image, cells, edges, d2, disk, rows, cols, p, int(seed))
    clu = ignore.copy()
    clu[background] = BACKGROUND
    clu[nuclei > 0] = NUCLEUS
    if p.method == "cluster":
        return _finish(clu, nuclei, vor, clu, p.method, point_ids, n)

    nucleus = (((nuclei > 0) | disk) & ~edges) | seeds
    semantic = ignore.copy()
    semantic[background | edges] = BACKGROUND
    semantic[nucleus] = NUCLEUS
    instances[nucleus] = np.where(nuclei > 0, nuclei, cells)[nucleus]
    return _finish(semantic, instances, vor, clu, p.method, point_ids, n)


def _finish(semantic, instances, vor, clu, method, point_ids, n) -> PseudoMask:
    present = np.zeros(n + 1, dtype=bool)
    ids = instances.ravel()
    present[ids[ids <= n]] = True
    present[0] = False
    point_ids = np.where(present[point_ids], point_ids, 0).astype(np.int32)
    return PseudoMask(semantic, instances, vor, clu, method, point_ids, n)


def _features(image: np.ndarray, d2: np.ndarray, p: PseudomaskParams, sample: np.ndarray) -> np.ndarray:
    """(C + 1, H*W) float32: intensity/colour in [0, 1] by the one contrast stretch
    (:func:`nucleate.io.images.percentile_stretch`, 0.5-99.5 percentiles of the subsample, all channels
    together so colour ratios survive), then the clipped distance to the nearest point scaled to
    [0, ``distance_weight``]."""
    channels = 1 if image.ndim == 2 else 3
    stretched = percentile_stretch(image, STRETCH_PERCENTILES, dtype=np.float32, sample=sample)
    feats = np.empty((channels + 1, d2.size), dtype=np.float32)
    feats[:channels] = stretched.reshape(-1, channels).T
    del stretched
    clip = p.px("distance_clip")
    dist = feats[channels]
    np.minimum(d2.ravel(), clip * clip, out=dist, casting="unsafe")
    np.sqrt(dist, out=dist)
    dist *= np.float32(p.distance_weight / clip)
    return feats


def _kmeans3(feats: np.ndarray, sample: np.ndarray, seed: int) -> np.ndarray:
    """k-means (k = 3) fitted on the ``sample`` columns of ``feats`` (D, N); returns the (N,) int8
    cluster of every pixel (nearest centre)."""
    if sample.size < 3:  # a 1- or 2-pixel image: one cluster
        return np.zeros(feats.shape[1], dtype=np.int8)
    from sklearn.cluster import KMeans  # here, not at import: scikit-learn costs every process ~1 s to import
    from sklearn.exceptions import ConvergenceWarning

    # one thread: scikit-learn's k-means sums in an order that depends on the thread count, and the pseudo-masks
    # must not depend on the machine's cores
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)  # fewer than 3 distinct colours: still fine
        km = KMeans(n_clusters=3, n_init=3, random_state=seed).fit(feats[:, sample].T)
    centres = km.cluster_centers_.astype(np.float32)
    best = np.zeros(feats.shape[1], dtype=np.int8)
    best_d = np.full(feats.shape[1], np.inf, dtype=np.float32)
    d = np.empty(feats.shape[1], dtype=np.float32)
    tmp = np.empty_like(d)
    for k, centre in enumerate(centres):
        d[:] = 0
        for row, c in zip(feats, centre, strict=True):
            np.subtract(row, c, out=tmp)
            tmp *= tmp
            d += tmp
        closer = d < best_d
        best[closer] = k
        best_d[closer] = d[closer]
    return best


def _cluster_labels(
    image: np.ndarray,
    cells: np.ndarray,
    edges: np.ndarray,
    d2: np.ndarray,
    disk: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    p: PseudomaskParams,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Qu et al.'s cluster label: ``(nuclei, background)`` = refined instance labels and a bool map."""
    shape = cells.shape
    size = cells.size
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(size, size=min(int(p.sample_pixels), size), replace=False))
    feats = _features(image, d2, p, sample)
    cluster = _kmeans3(feats, sample, int(rng.integers(2**31 - 1))).reshape(shape)

    nucleus_k = int(np.argmax(np.bincount(cluster[rows, cols], minlength=3)))
    near = d2 <= squared_radius(p.px("overlap_radius"))
    overlap = np.bincount(cluster[near], minlength=3).astype(np.float64)
    overlap[nucleus_k] = np.inf
    # a tie (e.g. neither overlaps the disks): the cluster least like the nucleus cluster, i.e. whose mean
    # feature vector (intensity, distance) lies farthest from the nucleus cluster's, whatever k-means' numbering
    fitted = cluster.ravel()[sample]
    count = np.maximum(np.bincount(fitted, minlength=3), 1)
    means = np.stack([np.bincount(fitted, weights=row[sample], minlength=3) for row in feats]) / count
    unlike = np.linalg.norm(means - means[:, nucleus_k : nucleus_k + 1], axis=0)
    background_k = int(np.lexsort((-unlike, overlap))[0])
    del feats

    comp, _ = ndi.label(cluster == nucleus_k, structure=_EIGHT)
    big = np.bincount(comp.ravel()) >= p.area_px("min_area") - 1e-6  # area >= min_area r² px (Qu: >= 30)
    big[0] = False
    blobs = big[comp]
    if p.refine == "per_cell":
        refined = _per_cell_closing(blobs, cells, edges, p.px("dilate"), p.px("erode"))
    else:
        refined = label_closing(np.where(blobs, cells, 0).astype(np.int32), p.px("dilate"), p.px("erode"))

    # a piece of a point's label touching that point's own disk is its nucleus; other pieces are unclicked
    comp, n_comp = label_components(refined, background=0, connectivity=2, return_num=True)
    clicked = np.zeros(n_comp + 1, dtype=bool)
    clicked[comp[disk & (refined == cells) & (comp > 0)]] = True
    clicked[0] = False
    lut = np.zeros(n_comp + 1, dtype=np.int32)
    if p.keep_unclicked:
        extra = np.flatnonzero(~clicked[1:]) + 1  # label() numbers pieces in raster order
        lut[extra] = rows.size + np.arange(1, extra.size + 1, dtype=np.int32)
    nuclei = np.where(clicked[comp], refined, lut[comp]).astype(np.int32)

    background = (cluster == background_k) & (nuclei == 0)
    background &= d2 > squared_radius(p.px("background_margin"))
    return nuclei, background


def _per_cell_closing(
    blobs: np.ndarray, cells: np.ndarray, edges: np.ndarray, dilate_px: float, erode_px: float
) -> np.ndarray:
    """Qu et al.'s refinement (``create_cluster_label``): every cell's part of ``blobs`` dilated, hole-filled
    and eroded on its own; the union is the nucleus map, each pixel labelled with its cell's point id.

    Cells are the 8-connected components of the non-boundary pixels grown by disk(2), a boundary pixel
    going to the highest component id within 2 px (``skimage.morphology.dilation``). A pixel reached by
    several cells' closings keeps the label of the cell it lies in if that one reaches it, else the first.
    Each closing runs on a window around its cell's nuclei (wide enough that the result equals the full
    image's); the image border does not erode (``binary_erosion`` with border value 1, as skimage's).
    """
    comp, n = ndi.label(~edges, structure=_EIGHT)
    grown = ndi.grey_dilation(comp, footprint=disk_footprint(2), mode="constant", cval=0)
    owner = np.zeros(n + 1, dtype=np.int32)  # component -> the point whose Voronoi cell holds it
    owner[comp.ravel()] = cells.ravel()
    owner[0] = 0
    parts = np.where(blobs, grown, 0)
    grow, shrink = disk_footprint(dilate_px), disk_footprint(erode_px)
    pad = grow.shape[0] // 2 + shrink.shape[0] // 2 + 2
    h, w = parts.shape
    out = np.zeros(parts.shape, dtype=np.int32)
    for k, window in enumerate(ndi.find_objects(parts), start=1):
        if window is None:
            continue
        rs, cs = window
        win = (slice(max(rs.start - pad, 0), min(rs.stop + pad, h)),
               slice(max(cs.start - pad, 0), min(cs.stop + pad, w)))
        part = parts[win] == k
        closed = ndi.binary_dilation(part, structure=grow)
        closed = ndi.binary_fill_holes(closed)
        closed = ndi.binary_erosion(closed, structure=shrink, border_value=1)
        target = out[win]
        target[closed & ((target == 0) | (grown[win] == k))] = owner[k]
    return out
