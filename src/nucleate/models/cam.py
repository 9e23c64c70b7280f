"""Grad-CAM at each encoder block, against the segmentation output (DoNuSeg reconstruction, methods.md 1.3(c)).

For encoder stage k with feature map A_k (N, C_k, h_k, w_k)::

    score  = sum over pixels of the nucleus logit seg[:, 1]        (or of seg[:, 1] * target_mask)
    w_k,c  = spatial mean of d score / d A_k,c
    CAM_k  = ReLU(sum_c w_k,c A_k,c), upsampled (bilinear) to the input size, min-max normalised per image

An image whose CAM is constant (e.g. an empty ``target_mask``) gets an all-zero map. Scores are
summed over the batch; in eval mode the images do not interact, so each image's CAM equals the one
it would get alone. In train mode BatchNorm's batch statistics couple them (as in the prototype,
which computed CAMs inside the training step).

:func:`grad_cam` runs its own forward pass. Inside a training step, use :func:`cams_from_output` on
the step's own ``model(x, return_features=True)`` output with ``retain_graph=True``; it takes the
gradients with :func:`torch.autograd.grad`, so parameter ``.grad`` fields are left untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nucleate.models.spec import ModelError
from nucleate.models.unet import StudentOutput, padded_size

__all__ = ["cams_from_output", "grad_cam"]


def _mask_weights(target_mask: torch.Tensor | None, seg: torch.Tensor) -> torch.Tensor | None:
    if target_mask is None:
        return None
    mask = target_mask
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if tuple(mask.shape) != (seg.shape[0], *seg.shape[-2:]):
        raise ModelError(f"grad_cam: target_mask must be (N, H, W) = {(seg.shape[0], *seg.shape[-2:])}, "
                         f"got {tuple(target_mask.shape)}")
    return mask.to(device=seg.device, dtype=torch.float32)


def _normalise(cam: torch.Tensor) -> torch.Tensor:
    """Per-image min-max to [0, 1]; a constant image becomes 0."""
    flat = cam.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    span = flat.max(dim=1).values[:, None, None] - lo
    return torch.where(span > 0, (cam - lo) / span.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))


def cams_from_output(
    out: StudentOutput,
    target_mask: torch.Tensor | None = None,
    *,
    retain_graph: bool = False,
    create_graph: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Grad-CAMs (N, H, W) float32 in [0, 1], one per encoder stage, from a ``return_features=True`` output.

    ``target_mask`` (N, H, W) or (N, 1, H, W), bool or float: weights of the nucleus logits in the
    score (default: all pixels). ``retain_graph=True`` keeps the graph for the caller's loss;
    ``create_graph=True`` makes the CAMs differentiable (otherwise they are detached).
    """
    if out.features is None:
        raise ModelError("grad_cam needs the encoder features: call the model with return_features=True")
    seg = out.seg
    height, width = seg.shape[-2:]
    nucleus = seg[:, 1].float()
    weights = _mask_weights(target_mask, seg)
    score = (nucleus if weights is None else nucleus * weights).sum()
    grads = torch.autograd.grad(score, out.features, retain_graph=retain_graph or create_graph,
                                create_graph=create_graph, allow_unused=True)
    size = padded_size(height, width)
    cams = []
    with torch.set_grad_enabled(create_graph):
        for feat, grad in zip(out.features, grads, strict=True):
            if grad is None:  # the score does not depend on this stage
                cams.append(torch.zeros(seg.shape[0], height, width, device=seg.device))
                continue
            feat = feat.float()
            if not create_graph:
                feat = feat.detach()
            w = grad.float().mean(dim=(2, 3), keepdim=True)
            cam = F.relu((w * feat).sum(dim=1, keepdim=True))
            cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0, :height, :width]
            cams.append(_normalise(cam))
    return tuple(cams)


def grad_cam(model: torch.nn.Module, images: torch.Tensor, target_mask: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, ...]:
    """Grad-CAM of each of the 4 encoder stages: a tuple of 4 (N, H, W) float32 maps in [0, 1].

    Runs ``model(images, return_features=True)`` in the model's current mode (use ``model.eval()``
    for per-image CAMs) with gradients enabled, also when called under ``torch.no_grad`` or
    ``torch.inference_mode``; an active ``torch.autocast`` applies. Parameter gradients are not touched.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = images.clone() if images.is_inference() else images
        if x.is_floating_point():  # a graph to the features even when the model is frozen
            x = x.detach().requires_grad_(True)
        if target_mask is not None and target_mask.is_inference():
            target_mask = target_mask.clone()
        out = model(x, return_features=True)
        return cams_from_output(out, target_mask)
