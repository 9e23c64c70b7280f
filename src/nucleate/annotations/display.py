"""Images as annotators see them: 8-bit gray or RGB renditions of microscopy images (pure numpy).

Browsers do not show TIFF, and a 16-bit fluorescence image shown as-is is nearly black, so the image
put in front of an annotator is a contrast-stretched 8-bit copy **of the same pixel size** (point
coordinates carry over unchanged). The stretch is :func:`nucleate.io.images.percentile_stretch`.
"""

from __future__ import annotations

import numpy as np

from nucleate.io.images import STRETCH_PERCENTILES, percentile_stretch

__all__ = ["display_uint8"]


def display_uint8(image: np.ndarray, low_pct: float = STRETCH_PERCENTILES[0],
                  high_pct: float = STRETCH_PERCENTILES[1]) -> np.ndarray:
    """An 8-bit rendition of ``image`` ((H, W) or (H, W, C)) with the same height and width.

    * Channels: 1 -> gray, 3 -> RGB, 4 -> RGB (alpha dropped), 2 or > 4 -> first channel as gray.
    * Intensities: :func:`nucleate.io.images.percentile_stretch` with (``low_pct``, ``high_pct``): ``uint8``
      RGB unchanged; everything else (8-bit gray included) stretched so the two percentiles map to 0 and
      255; a constant image becomes 0.

    Returns ``(H, W)`` or ``(H, W, 3)`` uint8.
    """
    a = np.asarray(image)
    if a.ndim == 3:
        a = a[..., :3] if a.shape[2] in (3, 4) else a[..., 0]
    elif a.ndim != 2:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {a.shape}")
    return percentile_stretch(a, (low_pct, high_pct))
