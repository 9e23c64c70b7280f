"""DoNuSeg's dynamic CAM selection (DCS; reconstruction, methods.md 1.3(d)): the pseudo label P of each image.

For one training image with initial label M (the pseudo-mask ``semantic`` map: 0 background, 1 nucleus,
255 ignore) and the 4 encoder blocks' Grad-CAMs (:func:`nucleate.models.grad_cam`, eval mode, score =
sum of nucleus logits over the image)::

    C_k = CAM_k >= theta                                      (donuseg.cam_threshold)
    alpha_k = mean of IoU(C_k, M = 1) and IoU(not C_k, M = 0)  (donuseg.similarity: miou), or
              IoU(C_k, M = 1)                                 (similarity: iou), or
              |C_k & M = 1| / |M = 1|                         (similarity: coverage)
              all over the pixels where M != 255
    k* = argmax_k alpha_k (donuseg.cam_selection: dynamic; ties -> the deeper block), or 4 (last)
    P = M where M != 255, else C_k*                           (donuseg.pseudo_label: fill_ignore), or
    P = C_k*                                                  (pseudo_label: replace)

``miou`` (the default) also scores a block on M's background: on the sample pool images a block whose
map covers much of the image (stage 4 at theta 0.5) wins on nucleus IoU alone although it marks the
ignored pixels, 98 % of which are background, wrong (BENCHMARKS.md, "DoNuSeg reconstruction").
P and CAM_k* are refreshed every ``donuseg.refresh_epochs`` epochs from ``donuseg.start_epoch`` on
(:func:`refresh_pseudo_labels`); the training loss then adds lambda_P * CE(seg, P) and the CAM-guided
contrast (:func:`nucleate.training.losses.contrastive_loss`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nucleate.config import DonusegParams
from nucleate.models import StudentNet, grad_cam
from nucleate.pseudomask import IGNORE, NUCLEUS
from nucleate.training.data import TrainingImage

__all__ = ["block_similarity", "pseudo_label", "refresh_pseudo_labels", "select_block"]


def block_similarity(cam: np.ndarray, initial: np.ndarray, threshold: float, similarity: str) -> float:
    """alpha of one block: ``cam`` (h, w) in [0, 1] thresholded, against ``initial`` M (module docstring)."""
    valid = initial != IGNORE
    fg = (initial == NUCLEUS) & valid
    binary = (cam >= threshold) & valid

    def ratio(a: np.ndarray, b: np.ndarray, union: bool = True) -> float:
        total = float(np.count_nonzero((a | b) if union else b))
        return float(np.count_nonzero(a & b)) / total if total else 0.0

    if similarity == "coverage":
        return ratio(binary, fg, union=False)
    if similarity == "iou":
        return ratio(binary, fg)
    if similarity == "miou":
        return 0.5 * (ratio(binary, fg) + ratio(valid & ~binary, valid & ~fg))
    raise ValueError(f"donuseg.similarity must be miou, iou or coverage, got {similarity!r}")


def select_block(cams: Sequence[np.ndarray], initial: np.ndarray, params: DonusegParams) -> tuple[int, list[float]]:
    """(k* as 0-based block index, alpha of every block) for one image (module docstring)."""
    alphas = [block_similarity(c, initial, params.cam_threshold, params.similarity) for c in cams]
    if params.cam_selection == "last":
        return len(cams) - 1, alphas
    best = max(alphas)
    return max(k for k, a in enumerate(alphas) if a == best), alphas


def pseudo_label(cam: np.ndarray, initial: np.ndarray, params: DonusegParams) -> np.ndarray:
    """P (uint8 (h, w), 0 / 1) from the selected CAM."""
    binary = (cam >= params.cam_threshold).astype(np.uint8)
    if params.pseudo_label == "replace":
        return binary
    return np.where(initial != IGNORE, initial, binary).astype(np.uint8)


def refresh_pseudo_labels(model: StudentNet, images: list[TrainingImage], params: DonusegParams,
                          device: torch.device) -> dict[str, object]:
    """Recompute P and CAM_k* of every image in place (model in eval mode meanwhile); a summary for the log.

    Returns ``{"blocks": [count of images choosing block 1..4], "alpha": [mean alpha of block 1..4]}``.
    """
    was_training = model.training
    model.eval()
    counts = [0, 0, 0, 0]
    alpha_sums = np.zeros(4)
    try:
        for im in images:
            x = torch.from_numpy(im.x[None]).to(device)
            cams = [c[0].float().cpu().numpy() for c in grad_cam(model, x)]
            initial = im.semantic
            k, alphas = select_block(cams, initial, params)
            counts[k] += 1
            alpha_sums += alphas
            im.pseudo = pseudo_label(cams[k], initial, params)
            h, w = im.valid_shape or im.shape  # pixels past it were added by pad_to: never supervised
            im.pseudo[h:, :] = IGNORE
            im.pseudo[:, w:] = IGNORE
            im.cam = cams[k].astype(np.float16)
    finally:
        model.train(was_training)
    return {"blocks": counts, "alpha": [round(float(a), 4) for a in alpha_sums / max(1, len(images))]}

