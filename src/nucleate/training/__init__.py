"""Training the student from clicked points (Qu et al. 2019, DoNuSeg reconstruction) or full masks.

* :func:`prepare_image` — native image + maps -> :class:`TrainingImage` at the model's nucleus scale.
* :func:`train` — the loop (:mod:`nucleate.training.loop`: loss per supervision mode, AdamW + cosine,
  AMP / channels_last on CUDA, deterministic on CPU, a checkpoint per epoch and resume).
* :mod:`nucleate.training.donuseg` — dynamic CAM selection (the pseudo label P);
  :mod:`nucleate.training.losses` — the loss terms.
"""

from nucleate.training.data import Batch, TrainingImage, gaussian_heatmap, pad_to, sample_batch
from nucleate.training.donuseg import block_similarity, pseudo_label, refresh_pseudo_labels, select_block
from nucleate.training.loop import (
    CHECKPOINT_FORMAT,
    KdPool,
    TrainError,
    TrainResult,
    heatmap_trained,
    model_spec,
    params_dict,
    train,
)
from nucleate.training.prepare import UnlabeledPool, prepare_image

__all__ = [
    "CHECKPOINT_FORMAT",
    "Batch",
    "KdPool",
    "TrainError",
    "TrainResult",
    "TrainingImage",
    "UnlabeledPool",
    "block_similarity",
    "gaussian_heatmap",
    "heatmap_trained",
    "model_spec",
    "pad_to",
    "params_dict",
    "prepare_image",
    "pseudo_label",
    "refresh_pseudo_labels",
    "sample_batch",
    "select_block",
    "train",
]
