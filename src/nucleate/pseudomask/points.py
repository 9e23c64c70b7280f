"""Point -> pseudo-mask priors of Qu et al. (MIDL 2019): Voronoi labels, cluster labels, and both.

``from_points(image, points, method)`` turns one click per nucleus into a training mask:

* ``semantic`` (H, W) uint8: 0 = background, 1 = nucleus, 255 = ignore (no loss there);
* ``instances`` (H, W) int32: 0 = none, ``i`` = the nucleus of unique point ``i`` (1-based, in
  order of first appearance; duplicate points, i.e. points in the same pixel, collapse to one).

Methods (docs/methods.md section 3.1; every length is a multiple of ``nucleus_radius_px`` = r, so
Qu et al.'s pixel constants are recovered at r = 10, their 40x H&E scale):

* ``voronoi`` - Voronoi cell boundaries (2 px) are background, a disk of ``point_radius``·r
  (Qu: 2 px) around each point is nucleus, everything else is ignore.
* ``cluster`` - k-means (k = 3) on [normalised intensity or colour, distance to the nearest point
  clipped at ``distance_clip``·r (Qu: 20 px) x ``distance_weight``], fitted on a pixel subsample.
  The cluster holding most points is nucleus; of the other two, the one overlapping least with
  disks of ``overlap_radius``·r (Qu: 5 px) around the points is background, the third is ignore.
  Nucleus blobs under ``min_area``·πr² (Qu: 30 px) are dropped, then refined inside each Voronoi
  cell: dilate ``dilate``·r (Qu: 5), fill holes, erode ``erode``·r (Qu: 7); cells never merge.
  Only the blob holding its cell's point is kept (a blob without a point -- an unclicked nucleus
  or debris -- becomes ignore, not a wrong instance). Background is also kept ``background_margin``·r
  (Qu: 10 px) away from every point.
* ``voronoi_cluster`` (default, the labels Qu et al. train on) - both combined: background =
  Voronoi boundaries or the background cluster; nucleus = refined cluster nuclei or point disks,
  never on a boundary.

An image with no points gives an all-ignore semantic map and no instances (nothing is known about
it). Images: (H, W) gray or (H, W, 3) RGB, uint8 / uint16 (or float). Deterministic for a given
``seed``. Cost is O(pixels): Voronoi cells and all morphology are distance-transform propagations.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from nucleate.pseudomask.geometry import (
    PointError,
    cell_edges,
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
    "PseudomaskOptions",
    "from_points",
]

BACKGROUND, NUCLEUS, IGNORE = 0, 1, 255
METHODS = ("voronoi", "cluster", "voronoi_cluster")


@dataclass(frozen=True)
class PseudomaskOptions:
    """Tunables of :func:`from_points`. Lengths are multiples of ``nucleus_radius_px`` (r, pixels).

    The defaults are Qu et al.'s recipe verbatim (r = 10 gives their pixel constants); the pipeline
    passes the values tuned for its data from ``params.yaml`` (section ``pseudomask``).
    """

    nucleus_radius_px: float = 10.0  # nucleus scale in pixels (params: pseudomask.nucleus_radius_px)
    point_radius: float = 0.25  # x r: nucleus disk around each point (Voronoi label; Qu 2 px)
    distance_clip: float = 2.0  # x r: clip of the distance-to-point feature (Qu 20 px)
    distance_weight: float = 0.8  # weight of the [0, 1] distance feature vs [0, 1] intensity (Qu ~20/25.5)
    overlap_radius: float = 0.5  # x r: point disks used to tell the background cluster (Qu 5 px)
    background_margin: float = 1.0  # x r: no background this close to a point (Qu 10 px)
    dilate: float = 0.5  # x r: refinement dilation inside each Voronoi cell (Qu 5 px)
    erode: float = 0.7  # x r: refinement erosion (Qu 7 px)
    min_area: float = 0.1  # x pi r^2: smaller nucleus-cluster blobs are dropped (Qu 30 px)
    sample_pixels: int = 20_000  # pixels the k-means is fitted on
    seed: int = 0  # seeds the pixel subsample and k-means (numpy Generator)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "seed":
                if not isinstance(value, int | np.integer) or value < 0:
                    raise ValueError(f"seed must be a non-negative integer, got {value!r}")
            elif not isinstance(value, int | float | np.integer | np.floating) or not np.isfinite(value) or (
                value <= 0 if f.name in ("nucleus_radius_px", "sample_pixels", "distance_clip") else value < 0
            ):
                raise ValueError(f"pseudomask option {f.name} must be a finite number >= 0 "
                                 f"(> 0 for nucleus_radius_px, sample_pixels, distance_clip); got {value!r}")

    def px(self, name: str) -> float:
        """Option ``name`` in pixels (its factor times ``nucleus_radius_px``)."""
        return float(getattr(self, name)) * self.nucleus_radius_px


@dataclass(frozen=True)
class PseudoMask:
    """A pseudo-mask: ``semantic`` (H, W) uint8 0/1/255, ``instances`` (H, W) int32.

    ``point_ids`` (K,) int32 gives, for every input point, its instance id in ``instances`` (points
    in the same pixel share one; 0 if the point's nucleus has no pixel, which cannot happen for
    ``voronoi`` and ``voronoi_cluster``). ``n_points`` counts unique points.
    """

    semantic: np.ndarray
    instances: np.ndarray
    method: str
    point_ids: np.ndarray
    n_points: int

    @property
    def n_instances(self) -> int:
        """Number of distinct instance ids present in ``instances``."""
        present = np.bincount(self.instances.ravel(), minlength=self.n_points + 1)[1:] > 0
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


def from_points(image: np.ndarray, points: np.ndarray, method: str = "voronoi_cluster", **options) -> PseudoMask:
    """Pseudo-mask of ``image`` from one point per nucleus (see the module docstring).

    ``image``: (H, W) or (H, W, 3); ``points``: (K, 2) float (x, y) pixels, x = column, origin at
    the top-left corner of the top-left pixel (its centre is (0.5, 0.5)). ``options``: fields of
    :class:`PseudomaskOptions` (e.g. ``nucleus_radius_px=12``, ``seed=0``).

    Raises :class:`PointError` (a ``ValueError`` with ``.index``) for a NaN/infinite point or one
    outside the image, ``ValueError`` for an unknown method/option or a bad image.
    """
    if method not in METHODS:
        raise ValueError(f"unknown pseudo-mask method {method!r}; choose one of {', '.join(METHODS)}")
    known = {f.name for f in dataclasses.fields(PseudomaskOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown pseudo-mask option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    opts = PseudomaskOptions(**options)
    image = _check_image(image)
    shape = image.shape[:2]
    rows, cols, point_ids = seed_pixels(points, shape)
    n = rows.size
    semantic = np.full(shape, IGNORE, dtype=np.uint8)
    instances = np.zeros(shape, dtype=np.int32)
    if n == 0:
        return PseudoMask(semantic, instances, method, point_ids, 0)

    cells, d2 = voronoi(rows, cols, shape)
    seeds = np.zeros(shape, dtype=bool)
    seeds[rows, cols] = True
    disk = d2 <= squared_radius(opts.px("point_radius"))

    if method in ("voronoi", "voronoi_cluster"):
        edges = cell_edges(cells)
    if method == "voronoi":
        nucleus = (disk & ~edges) | seeds
        semantic[edges] = BACKGROUND
        semantic[nucleus] = NUCLEUS
        instances[nucleus] = cells[nucleus]
    else:
        nuclei, background = _cluster_labels(image, cells, d2, disk, rows, cols, opts)
        if method == "cluster":
            semantic[background] = BACKGROUND
            semantic[nuclei > 0] = NUCLEUS
            instances[:] = nuclei
        else:
            nucleus = (((nuclei > 0) | disk) & ~edges) | seeds
            semantic[background | edges] = BACKGROUND
            semantic[nucleus] = NUCLEUS
            instances[nucleus] = np.where(nuclei > 0, nuclei, cells)[nucleus]

    present = np.zeros(n + 1, dtype=bool)
    present[instances.ravel()] = True
    present[0] = False
    point_ids = np.where(present[point_ids], point_ids, 0).astype(np.int32)
    return PseudoMask(semantic, instances, method, point_ids, n)


def _features(image: np.ndarray, d2: np.ndarray, opts: PseudomaskOptions, sample: np.ndarray) -> np.ndarray:
    """(C + 1, H*W) float32: intensity/colour scaled to [0, 1] by the subsample's 0.5-99.5 percentiles
    (all channels together, so colour ratios survive), then the clipped distance to the nearest point."""
    channels = 1 if image.ndim == 2 else 3
    pixels = image.reshape(-1, channels)
    lo, hi = np.percentile(pixels[sample].astype(np.float64), [0.5, 99.5])
    scale = 1.0 / (hi - lo) if hi > lo else 1.0
    feats = np.empty((channels + 1, pixels.shape[0]), dtype=np.float32)
    for c in range(channels):
        row = feats[c]
        np.multiply(pixels[:, c], np.float32(scale), out=row, casting="unsafe")
        row -= np.float32(lo * scale)
        np.clip(row, 0.0, 1.0, out=row)
    clip = opts.px("distance_clip")
    dist = feats[channels]
    np.minimum(d2.ravel(), clip * clip, out=dist, casting="unsafe")
    np.sqrt(dist, out=dist)
    dist *= np.float32(opts.distance_weight / clip)
    return feats


def _kmeans3(feats: np.ndarray, sample: np.ndarray, seed: int) -> np.ndarray:
    """k-means (k = 3) fitted on the ``sample`` columns of ``feats`` (D, N); returns the (N,) int8
    cluster of every pixel (nearest centre)."""
    if sample.size < 3:  # a 1- or 2-pixel image: one cluster
        return np.zeros(feats.shape[1], dtype=np.int8)
    with warnings.catch_warnings():
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
    d2: np.ndarray,
    disk: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    opts: PseudomaskOptions,
) -> tuple[np.ndarray, np.ndarray]:
    """Qu et al.'s cluster label: ``(nuclei, background)`` = refined instance labels (cell ids) and a bool map."""
    shape = cells.shape
    size = cells.size
    rng = np.random.default_rng(opts.seed)
    sample = np.sort(rng.choice(size, size=min(int(opts.sample_pixels), size), replace=False))
    feats = _features(image, d2, opts, sample)
    cluster = _kmeans3(feats, sample, int(rng.integers(2**31 - 1))).reshape(shape)
    del feats

    nucleus_k = int(np.argmax(np.bincount(cluster[rows, cols], minlength=3)))
    near = d2 <= squared_radius(opts.px("overlap_radius"))
    overlap = np.bincount(cluster[near], minlength=3).astype(np.float64)
    overlap[nucleus_k] = np.inf
    background_k = int(np.argmin(overlap))

    blobs = cluster == nucleus_k
    comp, _ = ndi.label(blobs)
    area = np.bincount(comp.ravel())
    big = area >= opts.min_area * np.pi * opts.nucleus_radius_px**2
    big[0] = False
    labels = np.where(big[comp], cells, 0).astype(np.int32)
    refined = label_closing(labels, opts.px("dilate"), opts.px("erode"))

    # keep, per cell, only the blobs that reach their own point's disk
    comp, n_comp = ndi.label(refined > 0)
    own = disk & (refined == cells) & (comp > 0)
    keep = np.zeros(n_comp + 1, dtype=bool)
    keep[comp[own]] = True
    keep[0] = False
    nuclei = np.where(keep[comp], refined, 0).astype(np.int32)

    background = (cluster == background_k) & (nuclei == 0)
    background &= d2 > squared_radius(opts.px("background_margin"))
    return nuclei, background
