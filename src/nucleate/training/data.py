"""Training images at the model's scale, and random augmented crops of them.

A :class:`TrainingImage` holds one annotated image, already passed through
:func:`nucleate.models.network_input` and resized to the model's nucleus scale, with every map a
supervision mode may need, all (h, w) at that scale:

* ``voronoi``, ``cluster``, ``semantic`` — uint8 pseudo-masks (0 background, 1 nucleus, 255 ignore;
  :mod:`nucleate.pseudomask`), absent (None) where the mode does not use them;
* ``full`` — uint8 ground truth (0 / 1) for ``supervision: full``;
* ``heatmap`` — float32 Gaussian point target of the heat-map head (:func:`gaussian_heatmap`);
* ``pseudo`` and ``cam`` — DoNuSeg's pseudo label P (uint8, 255 until the first refresh) and the selected
  block's CAM (float16 in [0, 1]); rewritten in place by :mod:`nucleate.training.donuseg`.

:func:`sample_batch` draws one batch of crops with a :class:`numpy.random.Generator`: images with
probability proportional to their area, a uniform crop offset, a random dihedral transform (rot90 x
flip, applied to every map alike) and an intensity jitter (gamma, contrast, brightness) on the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nucleate.pseudomask import IGNORE

__all__ = ["MAP_NAMES", "Batch", "TrainingImage", "gaussian_heatmap", "pad_to", "sample_batch"]

#: label maps a TrainingImage may carry (uint8, 255 = ignore), cropped with the image
MAP_NAMES = ("voronoi", "cluster", "semantic", "full", "pseudo")


def gaussian_heatmap(shape: tuple[int, int], points_xy: np.ndarray, sigma_px: float) -> np.ndarray:
    """float32 (h, w) heat-map: max over points of exp(-d^2 / 2 sigma^2), values < 0.05 set to 0 (DAWN's rule).

    ``points_xy`` (K, 2): x = column, y = row in pixels with the origin at the top-left pixel's corner
    (pixel (r, c) has its centre at (c + 0.5, r + 0.5)). Each point is drawn in a window of 3 sigma.
    """
    height, width = shape
    heat = np.zeros(shape, np.float32)
    reach = max(1, int(np.ceil(3 * sigma_px)))
    for x, y in np.asarray(points_xy, np.float64).reshape(-1, 2):
        c0, r0 = int(np.floor(x)), int(np.floor(y))
        rows = np.arange(max(0, r0 - reach), min(height, r0 + reach + 1))
        cols = np.arange(max(0, c0 - reach), min(width, c0 + reach + 1))
        if not rows.size or not cols.size:
            continue
        dy = (rows + 0.5 - y)[:, None]
        dx = (cols + 0.5 - x)[None, :]
        blob = np.exp(-(dx * dx + dy * dy) / (2.0 * sigma_px * sigma_px)).astype(np.float32)
        view = heat[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        np.maximum(view, blob, out=view)
    heat[heat < 0.05] = 0.0
    return heat


@dataclass
class TrainingImage:
    """One annotated image at the model's scale (module docstring). ``x`` is float32 (C, h, w) in [0, 1]."""

    image_id: str
    x: np.ndarray
    heatmap: np.ndarray
    points: int  # clicks (or ground-truth centres) this image contributes
    voronoi: np.ndarray | None = None
    cluster: np.ndarray | None = None
    semantic: np.ndarray | None = None
    full: np.ndarray | None = None
    pseudo: np.ndarray | None = None
    cam: np.ndarray | None = None
    teacher_probs: np.ndarray | None = None  # (C_cls,) float32: the teacher's probabilities of the whole image
    valid_shape: tuple[int, int] | None = None  # (h, w) before :func:`pad_to` grew it; None = never padded

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.x.shape[1]), int(self.x.shape[2])


def pad_to(item: TrainingImage, size: int) -> TrainingImage:
    """``item`` padded at the bottom / right to at least ``size`` x ``size`` (image: edge values; maps: ignore)."""
    height, width = item.shape
    ph, pw = max(0, size - height), max(0, size - width)
    if not ph and not pw:
        return item
    item.valid_shape = item.valid_shape or (height, width)
    item.x = np.pad(item.x, ((0, 0), (0, ph), (0, pw)), mode="edge")
    item.heatmap = np.pad(item.heatmap, ((0, ph), (0, pw)))
    for name in MAP_NAMES:
        value = getattr(item, name)
        if value is not None:
            setattr(item, name, np.pad(value, ((0, ph), (0, pw)), constant_values=IGNORE))
    if item.cam is not None:
        item.cam = np.pad(item.cam, ((0, ph), (0, pw)))
    return item


@dataclass
class Batch:
    """One batch of crops: ``x`` float32 (N, C, p, p); maps uint8 (N, p, p) or None; ``heatmap`` float32."""

    x: np.ndarray
    heatmap: np.ndarray
    maps: dict[str, np.ndarray | None]
    cam: np.ndarray | None
    teacher_probs: np.ndarray | None  # (N, C_cls) or None when an image of the batch has no teacher row
    indices: np.ndarray  # which TrainingImage each crop came from


def _dihedral(array: np.ndarray, k: int, flip: bool) -> np.ndarray:
    out = np.rot90(array, k, axes=(-2, -1))
    return out[..., ::-1] if flip else out


def _jitter_draw(strength: float, rng: np.random.Generator) -> tuple | None:
    """(gamma, contrast, brightness) of one crop's intensity jitter, drawn from ``rng``; None when off."""
    if strength <= 0:
        return None
    gamma, contrast = np.exp(rng.uniform(-strength, strength, 2))
    brightness = rng.uniform(-strength, strength) / 2
    return gamma, contrast, brightness  # numpy float64 scalars (the arithmetic's dtype depends on it)


def _jitter(x: np.ndarray, draw: tuple | None) -> np.ndarray:
    if draw is None:
        return x
    gamma, contrast, brightness = draw
    x = np.power(np.clip(x, 0.0, 1.0), gamma)
    mean = float(x.mean())
    return np.clip((x - mean) * contrast + mean + brightness, 0.0, 1.0)


def sample_batch(images: list[TrainingImage], rng: np.random.Generator, *, batch_size: int, patch_px: int,
                 jitter: float, part: slice | None = None) -> Batch:
    """``batch_size`` augmented ``patch_px`` crops (module docstring); every image must be >= patch_px a side.

    All crops get the channel count of the image with the most channels (gray is repeated to RGB).
    ``part``: keep only these crops of the batch (one rank's share, :func:`nucleate.training.distributed.shard`);
    every random number of the whole batch is still drawn, so the shares of all ranks together are the
    batch one process draws, and ``rng`` ends in the same state.
    """
    areas = np.array([im.shape[0] * im.shape[1] for im in images], np.float64)
    picks = rng.choice(len(images), size=batch_size, p=areas / areas.sum())
    channels = max(im.x.shape[0] for im in images)
    present = [name for name in MAP_NAMES if all(getattr(images[i], name) is not None for i in picks)]
    kept = range(batch_size)[part] if part is not None else range(batch_size)
    xs, heats, cams, maps = [], [], [], {name: [] for name in present}
    for n, i in enumerate(picks):
        im = images[i]
        height, width = im.shape
        r = int(rng.integers(0, height - patch_px + 1))
        c = int(rng.integers(0, width - patch_px + 1))
        k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
        draw = _jitter_draw(jitter, rng)
        if n not in kept:
            continue
        window = (slice(r, r + patch_px), slice(c, c + patch_px))
        x = _dihedral(im.x[(slice(None), *window)], k, flip)
        if x.shape[0] < channels:
            x = np.repeat(x, channels, axis=0)
        xs.append(_jitter(x, draw))
        heats.append(_dihedral(im.heatmap[window], k, flip))
        cams.append(None if im.cam is None else _dihedral(im.cam[window], k, flip))
        for name in present:
            maps[name].append(_dihedral(getattr(im, name)[window], k, flip))
    all_picks = picks
    picks = picks[list(kept)]
    teacher = [images[i].teacher_probs for i in picks]
    if any(images[i].teacher_probs is None for i in all_picks):
        teacher = [None]
    return Batch(
        x=np.ascontiguousarray(np.stack(xs), dtype=np.float32),
        heatmap=np.ascontiguousarray(np.stack(heats), dtype=np.float32),
        maps={name: (np.ascontiguousarray(np.stack(maps[name])) if name in present else None) for name in MAP_NAMES},
        cam=None if any(c is None for c in cams) else np.ascontiguousarray(np.stack(cams), dtype=np.float32),
        teacher_probs=None if any(t is None for t in teacher) else np.stack(teacher).astype(np.float32),
        indices=picks,
    )
