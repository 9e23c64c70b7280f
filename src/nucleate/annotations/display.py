"""Images as annotators see them: 8-bit gray or RGB renditions of microscopy images (pure numpy).

Browsers do not show TIFF, and a 16-bit fluorescence image shown as-is is nearly black, so the image
put in front of an annotator is a contrast-stretched 8-bit copy **of the same pixel size** (point
coordinates carry over unchanged).
"""

from __future__ import annotations

import numpy as np

__all__ = ["display_uint8"]


def display_uint8(image: np.ndarray, low_pct: float = 0.5, high_pct: float = 99.5) -> np.ndarray:
    """An 8-bit rendition of ``image`` ((H, W) or (H, W, C)) with the same height and width.

    * ``uint8`` gray or RGB: returned unchanged (RGBA: alpha dropped).
    * Other dtypes (uint16, float...): each image is linearly stretched so that its ``low_pct`` and
      ``high_pct`` percentiles (over all channels) map to 0 and 255, clipped. A constant image becomes 0.
    * Channels: 1 -> gray, 3 -> RGB, 4 -> RGB (alpha dropped), 2 or > 4 -> first channel as gray.

    Returns ``(H, W)`` or ``(H, W, 3)`` uint8.
    """
    a = np.asarray(image)
    if a.ndim == 3:
        c = a.shape[2]
        a = a[..., :3] if c in (3, 4) else a[..., 0]
    elif a.ndim != 2:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {a.shape}")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    f = a.astype(np.float64)
    finite = np.isfinite(f)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    lo, hi = np.percentile(f[finite], [low_pct, high_pct])
    if not hi > lo:
        lo, hi = float(f[finite].min()), float(f[finite].max())
    if not hi > lo:
        return np.zeros(a.shape, np.uint8)
    out = np.clip((np.where(finite, f, lo) - lo) * (255.0 / (hi - lo)), 0, 255)
    return np.rint(out).astype(np.uint8)
