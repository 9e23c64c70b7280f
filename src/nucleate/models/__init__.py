"""The student network (plain torch): a U-Net with segmentation, point heat-map and image-level heads.

* :func:`build_student` / :func:`build_from_spec` -> :class:`StudentNet`; ``model(x)`` ->
  :class:`StudentOutput` (``seg``, ``heatmap``, ``image_logits``, ``embedding``; ``features`` and
  ``decoder_features`` with ``return_features=True``). Architecture and rules: :mod:`nucleate.models.unet`.
* :class:`ModelSpec` — the JSON-serialisable architecture record; :func:`save_model` / :func:`load_model`.
* :func:`network_input` / :func:`resize_labels` — image -> float32 (C, H, W) at the model's scale.
* :func:`grad_cam` / :func:`cams_from_output` — per-encoder-stage Grad-CAMs (DoNuSeg).
"""

from nucleate.models.cam import cams_from_output, grad_cam
from nucleate.models.persist import SPEC_FILE, WEIGHTS_FILE, LoadedModel, load_model, save_model
from nucleate.models.preprocess import network_input, resize_labels, scaled_shape
from nucleate.models.spec import ENCODERS, HEATMAP_DECODERS, SPEC_VERSION, ModelError, ModelSpec
from nucleate.models.unet import MULTIPLE, StudentNet, StudentOutput, build_from_spec, build_student, padded_size

__all__ = [
    "ENCODERS",
    "HEATMAP_DECODERS",
    "MULTIPLE",
    "SPEC_FILE",
    "SPEC_VERSION",
    "WEIGHTS_FILE",
    "LoadedModel",
    "ModelError",
    "ModelSpec",
    "StudentNet",
    "StudentOutput",
    "build_from_spec",
    "build_student",
    "cams_from_output",
    "grad_cam",
    "load_model",
    "network_input",
    "padded_size",
    "resize_labels",
    "save_model",
    "scaled_shape",
]
