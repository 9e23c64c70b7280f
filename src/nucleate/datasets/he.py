"""Pseudo-H&E: a fluorescence nuclear image rendered as an H&E-looking RGB image, pixel for pixel.

No package ships H&E images with nucleus masks (docs: offline-assets.md), so the mnfinder sample is re-rendered
in H&E colours; its instance masks stay exactly valid because no pixel moves. Recipe (:func:`pseudo_he`):

1. ``h`` = the nuclear channel clipped to its [1, 99.8] percentiles and scaled to [0, 1]
   (:func:`nucleate.io.percentile_stretch`);
2. ``e`` = ``0.35 + 0.25 * gaussian(U, sigma=8 px)``, ``U`` uniform [0, 1) noise drawn from the given
   ``numpy.random.Generator`` (a textured eosin background);
3. stain concentrations (H, E, DAB) = ``(0.02 + 0.16 h, 0.03 + 0.06 e, 0)``, rendered with
   :func:`skimage.color.combine_stains` and the stain matrix ``stains`` (default ``skimage.color.rgb_from_hed``,
   Ruifrok & Johnston's H&E-DAB vectors), then 8-bit. These H and E ranges match ``rgb2hed`` of a real H&E tile.

So nuclei are purple (hematoxylin), the rest pink (eosin), and :func:`skimage.color.rgb2hed` channel 0 gives back
the stretched nuclear channel up to an affine map and 8-bit rounding (the stain matrix is the inverse of
``rgb2hed``'s; correlation > 0.99 on the sample gold images).
:func:`restained` draws a perturbed stain matrix, a stand-in for another lab's or scanner's staining.
"""

from __future__ import annotations

import numpy as np
from skimage.color import combine_stains, rgb_from_hed
from skimage.filters import gaussian

from nucleate.io.images import percentile_stretch

__all__ = ["HE_PERCENTILES", "pseudo_he", "restained"]

#: percentiles of the nuclear channel mapped to hematoxylin 0 and 1
HE_PERCENTILES = (1.0, 99.8)


def pseudo_he(image: np.ndarray, rng: np.random.Generator, stains: np.ndarray = rgb_from_hed) -> np.ndarray:
    """(H, W, 3) uint8 pseudo-H&E of a gray nuclear image ((H, W), any integer dtype); see the module docstring.

    ``rng`` draws the eosin texture (H * W uniform values); ``stains`` (3, 3): rows = OD vectors of H, E, DAB.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"pseudo_he expects a gray (H, W) nuclear image, got shape {image.shape}")
    h = percentile_stretch(image, HE_PERCENTILES, dtype=np.float32).astype(np.float64)
    e = 0.35 + 0.25 * gaussian(rng.random(h.shape), sigma=8)
    concentrations = np.stack([0.02 + 0.16 * h, 0.03 + 0.06 * e, np.zeros_like(h)], axis=-1)
    rgb = combine_stains(concentrations, np.asarray(stains, dtype=np.float64))
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def restained(rng: np.random.Generator, angle_deg: float = 10.0, strength: float = 0.25) -> np.ndarray:
    """(3, 3) a perturbed ``rgb_from_hed``: the H and E OD vectors each turned by an angle drawn uniformly in
    [-angle_deg, angle_deg] degrees about a random axis and scaled by a factor in [1 - strength, 1 + strength]."""
    out = np.array(rgb_from_hed, dtype=np.float64)
    for row in (0, 1):
        v = out[row]
        axis = np.cross(v, rng.normal(size=3))
        axis /= np.linalg.norm(axis)
        theta = np.deg2rad(rng.uniform(-angle_deg, angle_deg))
        turned = v * np.cos(theta) + np.cross(axis, v) * np.sin(theta)  # Rodrigues; axis is normal to v
        out[row] = np.abs(turned) * rng.uniform(1 - strength, 1 + strength)
    return out
