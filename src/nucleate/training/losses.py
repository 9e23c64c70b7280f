"""Loss terms of the student (all return a scalar tensor; a term with nothing to supervise returns 0).

* :func:`seg_loss` — cross-entropy of the 2-class ``seg`` logits with ignore (label 255), Qu et al.'s
  ``NLLLoss(ignore_index=2)`` on log-softmax; mean over the labeled pixels of the batch.
* :func:`heatmap_loss` — binary cross-entropy of the heat-map logits against the Gaussian point target.
* :func:`kd_loss` — ActiveKD's distillation term T^2 KL(softmax(log p_teacher / T) || softmax(z / T)),
  ``batchmean``; teacher probabilities stand in for its logits (softmax(log p / T) = p^(1/T) / sum).
* :func:`contrastive_loss` — DoNuSeg's CAM-guided contrast (reconstruction, methods.md 1.3(e)): sampled
  confident nucleus / background pixel embeddings (L2-normalised) against the two class prototypes
  (the mean normalised embedding of each set, detached), InfoNCE with temperature tau.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nucleate.pseudomask import IGNORE

__all__ = ["contrastive_loss", "heatmap_loss", "kd_loss", "seg_loss"]


def seg_loss(seg_logits: torch.Tensor, labels: torch.Tensor, total: float | None = None) -> torch.Tensor:
    """CE of ``seg_logits`` (N, 2, h, w) against ``labels`` (N, h, w) uint8/long in {0, 1, 255 = ignore}.

    The mean over the labelled pixels; with ``total``, the sum divided by ``total`` instead (one rank's
    share of a global batch: the labelled pixels of the whole batch / world size).
    """
    labels = labels.long()
    if not bool((labels != IGNORE).any()):
        return seg_logits.sum() * 0.0
    if total is not None:
        return F.cross_entropy(seg_logits.float(), labels, ignore_index=IGNORE, reduction="sum") / total
    return F.cross_entropy(seg_logits.float(), labels, ignore_index=IGNORE)


def heatmap_loss(heat_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits of ``heat_logits`` (N, 1, h, w) against ``target`` (N, h, w) float in [0, 1]."""
    return F.binary_cross_entropy_with_logits(heat_logits[:, 0].float(), target.float())


def kd_loss(image_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(teacher || student) at temperature T, mean over the batch; (N, C) each."""
    t = float(temperature)
    target = F.softmax(torch.log(teacher_probs.float().clamp_min(1e-8)) / t, dim=1)
    log_student = F.log_softmax(image_logits.float() / t, dim=1)
    return F.kl_div(log_student, target, reduction="batchmean") * t * t


def contrastive_loss(embeddings: torch.Tensor, pseudo: torch.Tensor, cam: torch.Tensor, *, confidence: float,
                     temperature: float, pixels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """InfoNCE of confident pixel embeddings against the nucleus / background prototypes.

    ``embeddings`` (N, D, h, w): the decoder's last features. ``pseudo`` (N, h, w) in {0, 1, 255}: the
    pseudo label P; ``cam`` (N, h, w) in [0, 1]: its CAM. Confident nucleus: P = 1 and CAM >= ``confidence``;
    confident background: P = 0 and CAM <= 1 - ``confidence``. Up to ``pixels`` of each are sampled
    (``generator`` makes it reproducible); 0 when either set is empty.
    """
    emb = F.normalize(embeddings.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1])
    p = pseudo.reshape(-1).long()
    c = cam.reshape(-1).float()
    sets = [torch.nonzero((p == 1) & (c >= confidence)).flatten(),
            torch.nonzero((p == 0) & (c <= 1.0 - confidence)).flatten()]
    if any(s.numel() == 0 for s in sets):
        return embeddings.sum() * 0.0
    picked, targets = [], []
    for label, idx in enumerate(sets):
        if idx.numel() > pixels:
            order = torch.randperm(idx.numel(), generator=generator, device="cpu")[:pixels].to(idx.device)
            idx = idx[order]
        picked.append(emb[idx])
        targets.append(torch.full((idx.numel(),), label, dtype=torch.long, device=emb.device))
    prototypes = torch.stack([F.normalize(s.mean(dim=0), dim=0) for s in picked]).detach()  # (2, D)
    features = torch.cat(picked)
    logits = features @ prototypes.T / float(temperature)
    return F.cross_entropy(logits, torch.cat(targets))
