"""One image in, nucleus instances out, at the image's native size: the whole inference path.

:func:`segment_image`:

1. the image's nucleus radius R (pixels): given; or ``None`` = the training data's
   (``extra["data_nucleus_radius_px"]``, i.e. "same magnification as the training images"; the model's own
   ``nucleus_radius_px`` when the model does not record it); or ``"estimate"`` =
   :func:`nucleate.inference.estimate_nucleus_radius` on this image;
2. ``scale = extra["nucleus_radius_px"] / R``; ``x = network_input(image, scale)`` (after the student's stain
   transform when the model records one in ``extra["stain"]``: :meth:`nucleate.stain.StainTransform.student`);
3. :func:`nucleate.inference.predict_maps` (sliding windows of ``params.window_px`` at the model's scale);
4. :func:`nucleate.inference.instances_from_maps` at the model's scale, with ``peak_distance_px =
   params.peak_distance * r`` and ``min_area_px = params.min_area * r**2`` (r = the model's nucleus radius),
   markers ``params.markers`` (``auto``: ``heatmap`` when ``extra["heatmap_trained"]``, else ``distance``);
5. labels back to the native size (:func:`nucleate.models.resize_labels`, nearest neighbour); an instance too
   small to survive the resize is dropped and the rest relabelled 1..K, so instance k + 1 is row k of
   ``centres`` / ``scores``; centres (x, y, corner origin) are divided by the resize factor of each axis
   (``scale`` up to the rounding of the resized shape).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from skimage.segmentation import relabel_sequential

from nucleate.config import PredictParams
from nucleate.inference.instances import instances_from_maps
from nucleate.inference.maps import predict_maps
from nucleate.inference.scale import estimate_nucleus_radius
from nucleate.models import LoadedModel, ModelError, network_input, resize_labels
from nucleate.stain import StainTransform

__all__ = ["ESTIMATE", "Segmentation", "model_radius", "resolve_markers", "segment_image"]

#: ``nucleus_radius_px`` value asking :func:`segment_image` to estimate each image's nucleus radius
ESTIMATE = "estimate"


class Segmentation(NamedTuple):
    """One image's instances at its native size."""

    labels: np.ndarray  # (H, W) int32 instances, 0 background, 1..K
    centres: np.ndarray  # (K, 2) float64 (x, y) native pixels, corner origin; row k = instance k + 1
    scores: np.ndarray  # (K,) float32 mean foreground probability of each instance
    scale: float  # the factor the image was resized by before the network (model radius / image radius)
    nucleus_radius_px: float  # the image's nucleus radius (native pixels) that gave ``scale``
    image_probs: np.ndarray  # (C_cls,) float32 image-level class probabilities (the image head)
    embedding: np.ndarray  # (D,) float32 the student's pooled embedding of the image


def model_radius(extra: dict[str, Any]) -> float:
    """The nucleus radius (pixels) the saved model works at (``extra["nucleus_radius_px"]``); ModelError if absent."""
    value = extra.get("nucleus_radius_px")
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ModelError(f"the saved model records no valid nucleus_radius_px (got {value!r}) in student.json "
                         "extra; retrain it with this nucleate")
    return float(value)


def resolve_markers(markers: str, extra: dict[str, Any]) -> str:
    """``heatmap`` or ``distance`` for the ``predict.markers`` setting (``auto`` follows ``heatmap_trained``)."""
    if markers == "auto":
        return "heatmap" if extra.get("heatmap_trained", False) else "distance"
    return markers


def segment_image(
    loaded: LoadedModel,
    image: np.ndarray,
    params: PredictParams,
    *,
    nucleus_radius_px: float | str | None,
) -> Segmentation:
    """Instances of ``image`` ((H, W) gray or (H, W, 3) RGB, uint8 / uint16, as read by
    :func:`nucleate.io.read_image`) with the saved model ``loaded``; see the module docstring.

    ``nucleus_radius_px``: the image's nucleus radius in native pixels, ``None`` (the training data's) or
    :data:`ESTIMATE`. Raises ``ValueError`` for a bad radius or one that cannot be estimated,
    :class:`nucleate.models.ModelError` when the model lacks its nucleus radius.
    """
    image = np.asarray(image)
    r_model = model_radius(loaded.extra)
    if nucleus_radius_px is None:
        radius = float(loaded.extra.get("data_nucleus_radius_px") or r_model)
    elif isinstance(nucleus_radius_px, str):
        if nucleus_radius_px != ESTIMATE:
            raise ValueError(f"nucleus radius must be a number of pixels or {ESTIMATE!r}, got {nucleus_radius_px!r}")
        radius = estimate_nucleus_radius(image)
    else:
        radius = float(nucleus_radius_px)
    if not radius > 0 or not np.isfinite(radius):
        raise ValueError(f"nucleus radius must be a positive number of pixels, got {radius}")
    scale = r_model / radius
    stain = loaded.extra.get("stain")
    x = network_input(image if stain is None else StainTransform.from_extra(stain).student(image), scale)
    maps = predict_maps(loaded.model, x, window_px=params.window_px, overlap=params.overlap,
                        batch_size=params.batch_size, device=params.device)
    labels, centres, scores = instances_from_maps(
        maps.foreground, maps.heatmap, threshold=params.threshold,
        markers=resolve_markers(params.markers, loaded.extra), peak_threshold=params.peak_threshold,
        peak_distance_px=params.peak_distance * r_model, min_area_px=params.min_area * r_model**2)
    native = resize_labels(labels, image.shape[:2])
    if native.shape != labels.shape:
        present = np.zeros(len(centres) + 1, bool)
        present[np.unique(native)] = True
        keep = present[1:]
        if not keep.all():
            native = relabel_sequential(native)[0].astype(np.int32, copy=False)
            centres, scores = centres[keep], scores[keep]
        # the resize's actual factors per axis (shapes are rounded), x = column, y = row
        centres = centres * np.array([image.shape[1] / labels.shape[1], image.shape[0] / labels.shape[0]])
    return Segmentation(native.astype(np.int32, copy=False), centres, scores, float(scale), radius,
                        maps.image_probs, maps.embedding)
