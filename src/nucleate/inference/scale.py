"""The nucleus scale of an image, estimated without a model (to bring another magnification to the model's).

:func:`estimate_nucleus_radius`: contrast-stretch (:func:`nucleate.io.images.percentile_stretch`; RGB averaged
to gray), smooth (Gaussian, sigma 1 px), Otsu threshold, and take the *smaller* side of the threshold as
nuclei (nuclei cover less than half of a typical field: bright in fluorescence, dark in H&E / brightfield).
Connected components of at least :data:`MIN_COMPONENT_PX` pixels, not touching the image border, are the
nuclei; the radius is ``sqrt(median area / pi)``. Touching nuclei merge into one component and bias the
estimate upwards, so it is a starting point: pass the radius you measured when you know it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.segmentation import clear_border

from nucleate.io.images import percentile_stretch

__all__ = ["MIN_COMPONENT_PX", "estimate_nucleus_radius"]

#: components smaller than this (pixels) are noise, not nuclei
MIN_COMPONENT_PX = 9


def estimate_nucleus_radius(image: np.ndarray) -> float:
    """Typical nucleus radius (pixels, native resolution) of ``image`` ((H, W) gray or (H, W, 3) RGB, any dtype).

    Raises ``ValueError`` (advice: pass ``--nucleus-radius-px``) when the image is flat or no component of
    at least :data:`MIN_COMPONENT_PX` pixels is found.
    """
    gray = percentile_stretch(np.asarray(image), dtype=np.float32)
    if gray.ndim == 3:
        gray = gray.mean(axis=-1)
    gray = ndi.gaussian_filter(gray, 1.0)
    advice = "; pass --nucleus-radius-px (the nucleus radius in pixels) instead"
    if not float(gray.max()) > float(gray.min()):
        raise ValueError(f"cannot estimate the nucleus radius of a flat image{advice}")
    above = gray > threshold_otsu(gray)
    nuclei = above if above.mean() <= 0.5 else ~above
    components, n = ndi.label(clear_border(nuclei))
    areas = np.bincount(components.ravel(), minlength=n + 1)[1:]
    areas = areas[areas >= MIN_COMPONENT_PX]
    if not areas.size:
        raise ValueError(f"cannot estimate the nucleus radius: no nucleus-like blob of {MIN_COMPONENT_PX} pixels "
                         f"or more found{advice}")
    return math.sqrt(float(np.median(areas)) / math.pi)
