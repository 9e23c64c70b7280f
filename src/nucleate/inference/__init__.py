"""Inference: a saved student on images of any size, type and magnification -> nucleus instances and centres.

* :func:`predict_maps` -> :class:`Maps` — foreground / heat-map probabilities, image probabilities and the
  pooled embedding of one network input, by one forward pass or blended sliding windows (:mod:`.maps`).
* :func:`instances_from_maps` — marker-controlled watershed: (H, W) int32 labels, (K, 2) xy centres, (K,)
  scores (:mod:`.instances`).
* :func:`estimate_nucleus_radius` — an image's nucleus radius in pixels, without a model (:mod:`.scale`).
* :func:`segment_image` -> :class:`Segmentation` — all of it for one image read by
  :func:`nucleate.io.read_image`, rescaled to the model's nucleus scale and back (:mod:`.segment`).
"""

from nucleate.inference.instances import MARKERS, instances_from_maps
from nucleate.inference.maps import Maps, blend_weights, predict_maps, window_starts
from nucleate.inference.scale import MIN_COMPONENT_PX, estimate_nucleus_radius
from nucleate.inference.segment import ESTIMATE, Segmentation, model_radius, resolve_markers, segment_image

__all__ = [
    "ESTIMATE",
    "MARKERS",
    "MIN_COMPONENT_PX",
    "Maps",
    "Segmentation",
    "blend_weights",
    "estimate_nucleus_radius",
    "instances_from_maps",
    "model_radius",
    "predict_maps",
    "resolve_markers",
    "segment_image",
    "window_starts",
]
