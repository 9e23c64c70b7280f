"""Native-resolution inputs -> :class:`TrainingImage` at the model's scale, and the KD pool's lazy crops.

The scale is ``model.nucleus_radius_px / data nucleus radius`` (both pixels): images go through
:func:`nucleate.models.network_input`, label maps through :func:`nucleate.models.resize_labels`, points
are multiplied by it. Every image is padded to at least one crop (:func:`nucleate.training.data.pad_to`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from nucleate.io.images import read_image
from nucleate.models import network_input, resize_labels
from nucleate.training.data import TrainingImage, gaussian_heatmap, pad_to

__all__ = ["UnlabeledPool", "prepare_image"]


def prepare_image(
    image_id: str,
    image: np.ndarray,
    *,
    scale: float,
    patch_px: int,
    points_xy: np.ndarray,
    heatmap_sigma_px: float,
    voronoi: np.ndarray | None = None,
    cluster: np.ndarray | None = None,
    semantic: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    teacher_probs: np.ndarray | None = None,
) -> TrainingImage:
    """One annotated image (raw array as read) with its native-size maps -> a padded :class:`TrainingImage`.

    ``points_xy`` (K, 2) native pixels; ``heatmap_sigma_px`` at the model's scale; ``truth`` an int instance
    mask (becomes the 0 / 1 ``full`` map).
    """
    x = network_input(image, scale)
    shape = (int(x.shape[1]), int(x.shape[2]))
    points = np.asarray(points_xy, np.float64).reshape(-1, 2) * scale

    def fit(labels: np.ndarray | None) -> np.ndarray | None:
        if labels is None:
            return None
        if labels.shape != image.shape[:2]:
            raise ValueError(f"image {image_id}: a label map has shape {labels.shape}, the image {image.shape[:2]}")
        return resize_labels(labels, shape)

    full = fit(truth)
    item = TrainingImage(
        image_id=image_id, x=x, heatmap=gaussian_heatmap(shape, points, heatmap_sigma_px), points=len(points),
        voronoi=fit(voronoi), cluster=fit(cluster), semantic=fit(semantic),
        full=None if full is None else (full > 0).astype(np.uint8),
        teacher_probs=None if teacher_probs is None else np.asarray(teacher_probs, np.float32),
    )
    return pad_to(item, patch_px)


class UnlabeledPool:
    """Random crops of pool images for the KD term, read lazily (at most ``cache`` prepared images kept).

    ``paths`` and ``probs`` (N, C_cls) are parallel: an image and its teacher probabilities; ``reader(item)``
    returns an item's pixels (default: an image file; the train stage passes manifest rows and
    :func:`nucleate.slides.read_pool_image`, so whole-slide tiles are read from their slide).
    """

    def __init__(self, paths: Sequence[Path], probs: np.ndarray, *, scale: float, patch_px: int, cache: int = 64,
                 reader: Callable[[Path], np.ndarray] = read_image):
        if len(paths) != len(probs) or not len(paths):
            raise ValueError("UnlabeledPool needs one teacher row per image and at least one image")
        self.paths, self.probs = list(paths), np.asarray(probs, np.float32)
        self.scale, self.patch_px, self.cache_size, self.reader = scale, patch_px, cache, reader
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def _image(self, i: int) -> np.ndarray:
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        x = network_input(self.reader(self.paths[i]), self.scale)
        ph, pw = max(0, self.patch_px - x.shape[1]), max(0, self.patch_px - x.shape[2])
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="edge")
        self._cache[i] = x
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return x

    def __call__(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, C, p, p) float32 crops (flipped at random) and their (n, C_cls) teacher probabilities."""
        picks = rng.integers(0, len(self.paths), size=n)
        crops = []
        for i in picks:
            x = self._image(int(i))
            r = int(rng.integers(0, x.shape[1] - self.patch_px + 1))
            c = int(rng.integers(0, x.shape[2] - self.patch_px + 1))
            crop = x[:, r:r + self.patch_px, c:c + self.patch_px]
            crops.append(crop[..., ::-1] if rng.integers(0, 2) else crop)
        channels = max(c.shape[0] for c in crops)
        crops = [np.repeat(c, channels // c.shape[0], axis=0) for c in crops]
        return np.ascontiguousarray(np.stack(crops), dtype=np.float32), self.probs[picks]
