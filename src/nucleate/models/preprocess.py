"""What the student sees: one function from a read image to network input, used by training and inference.

:func:`network_input` turns an image as :func:`nucleate.io.read_image` returns it ((H, W) gray or (H, W, 3)
RGB, uint8 or uint16) into float32 (C, H', W') in [0, 1]: :func:`nucleate.io.percentile_stretch` (the
project's one contrast stretch: 8-bit RGB passes unchanged, everything else is stretched to its
percentiles), channels first, resized by ``scale`` (the model's nucleus radius / the data's). Label
maps follow with :func:`resize_labels` (nearest neighbour, no new values), point coordinates by a plain
multiplication (x, y have their origin at the top-left pixel's corner, so ``x * scale`` is exact).
"""

from __future__ import annotations

import numpy as np
from skimage.transform import resize

from nucleate.io.images import percentile_stretch

__all__ = ["network_input", "resize_labels", "scaled_shape"]


def scaled_shape(height: int, width: int, scale: float) -> tuple[int, int]:
    """(H', W') = (H, W) times ``scale``, rounded, at least 1 pixel each."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def network_input(image: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """float32 (C, H', W') in [0, 1] with C = 1 (gray) or 3 (RGB) and (H', W') = :func:`scaled_shape`.

    Shrinking uses an anti-aliased bilinear resize, enlarging a bilinear one.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError(f"expected an (H, W) gray or (H, W, 3) RGB image, got shape {image.shape}")
    stretched = percentile_stretch(image, dtype=np.float32)
    if stretched.ndim == 2:
        stretched = stretched[..., None]
    height, width = stretched.shape[:2]
    shape = scaled_shape(height, width, scale)
    if shape != (height, width):
        stretched = resize(stretched, (*shape, stretched.shape[-1]), order=1, anti_aliasing=scale < 1.0,
                           preserve_range=True).astype(np.float32)
        np.clip(stretched, 0.0, 1.0, out=stretched)
    return np.ascontiguousarray(stretched.transpose(2, 0, 1))


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``labels`` (H, W), any integer dtype, resized to ``shape`` by nearest neighbour (same dtype)."""
    labels = np.asarray(labels)
    if labels.shape == tuple(shape):
        return labels
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(np.int64),
                      labels.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(np.int64),
                      labels.shape[1] - 1)
    return labels[rows[:, None], cols[None, :]]
