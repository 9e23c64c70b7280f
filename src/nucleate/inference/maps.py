"""Network maps of one image of any size: one forward pass when it fits a window, else blended sliding windows.

Windows (``window_px`` square, at the model's scale) start every ``stride = round(window_px * (1 - overlap))``
pixels along each axis; the last window of a row / column is flush with the image edge. An axis shorter
than ``window_px`` gets one window spanning it, so every window of an image has the same shape and they
batch. Each window's per-pixel probabilities are multiplied by a separable linear ramp (:func:`blend_weights`:
1 in the middle, falling towards the window's borders over ``window_px - stride`` pixels, never 0) and summed;
the sum is divided by the summed weights. Pixels near a window's border (where the network sees less context
and padding) thus count less wherever another window covers them.

Image-level outputs over several windows are area-weighted means (each window's weight is its pixel count,
the same for all windows of an image): ``image_probs`` averages each window's softmax (probabilities, not
logits, so a confident window does not outvote the others without bound), ``embedding`` the windows' pooled
embeddings. When the image fits one window both are the network's own outputs (its embedding already pools
over the unpadded image).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from nucleate.device import resolve_device

__all__ = ["AUTO_BATCH", "Maps", "blend_weights", "predict_maps", "window_starts"]

#: windows per forward pass for ``batch_size`` 0, by device type
AUTO_BATCH = {"cpu": 1, "cuda": 8}


class Maps(NamedTuple):
    """Per-image network outputs at the input's (model-scale) resolution."""

    foreground: np.ndarray  # (H, W) float32: softmax nucleus probability (seg channel 1)
    heatmap: np.ndarray  # (H, W) float32: sigmoid of the point heat-map
    image_probs: np.ndarray  # (C_cls,) float32: softmax of the image head, area-weighted mean over windows
    embedding: np.ndarray  # (D,) float32: pooled embedding, area-weighted mean over windows


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets (px) of windows of length ``window`` covering ``[0, size)``; the last one ends at ``size``.

    ``[0]`` when ``size <= window`` (one window spanning the axis).
    """
    if size <= window:
        return [0]
    starts = list(range(0, size - window, max(1, stride)))
    starts.append(size - window)
    return starts


def blend_weights(length: int, ramp: int) -> np.ndarray:
    """(length,) float32 blending weights of one window axis: ``min(1, (d + 1) / (ramp + 1))``.

    ``d`` is the pixel's distance (in pixels) to the nearer end of the window, so weights rise linearly
    from ``1 / (ramp + 1)`` (never 0) at the ends to 1 at ``ramp`` pixels in; ``ramp`` 0 gives all ones.
    """
    d = np.minimum(np.arange(length), np.arange(length)[::-1]).astype(np.float32)
    return np.minimum(np.float32(1.0), (d + 1.0) / np.float32(max(0, ramp) + 1))


def predict_maps(
    model: torch.nn.Module,
    x: np.ndarray,
    *,
    window_px: int,
    overlap: float,
    batch_size: int,
    device: str | torch.device,
) -> Maps:
    """The blended maps of ``x`` (float32 (C, H, W) in [0, 1] from :func:`nucleate.models.network_input`).

    ``model`` is a :class:`nucleate.models.StudentNet` (or any module returning an object with ``seg``
    (N, 2, h, w) logits, ``heatmap`` (N, 1, h, w) logits, ``image_logits`` (N, C) and ``embedding`` (N, D));
    it is put in eval mode and moved to ``device`` (``auto``, ``cpu``, ``cuda``: :func:`nucleate.device.
    resolve_device`). ``window_px``: window side in pixels; ``overlap`` in [0, 1): the fraction of a window
    shared with the next; ``batch_size``: windows per forward pass, 0 = :data:`AUTO_BATCH` of the device
    (on the CPU one window at a time was fastest: batches of 4 ran at 0.67x, ``benchmarks/bench_train.py``).
    See the module docstring for the rules.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected a (C, H, W) network input, got shape {x.shape}")
    if window_px < 1 or batch_size < 0 or not 0.0 <= overlap < 1.0:
        raise ValueError(f"window_px must be >= 1, batch_size >= 0 and overlap in [0, 1); got {window_px}, "
                         f"{batch_size}, {overlap}")
    dev = resolve_device(device, setting="predict.device")
    batch_size = batch_size or AUTO_BATCH.get(dev.type, 1)
    model.eval()
    model.to(dev)
    _, height, width = x.shape
    stride = max(1, round(window_px * (1.0 - overlap)))
    rows, cols = window_starts(height, window_px, stride), window_starts(width, window_px, stride)
    wh, ww = min(window_px, height), min(window_px, width)
    tensor = torch.from_numpy(np.ascontiguousarray(x))
    if len(rows) == 1 and len(cols) == 1:
        with torch.inference_mode():
            out = model(tensor[None].to(dev))
        fg, heat, probs, emb = _to_numpy(out)
        return Maps(fg[0], heat[0], probs[0], emb[0])

    ramp = window_px - stride
    weight = blend_weights(wh, ramp)[:, None] * blend_weights(ww, ramp)[None, :]
    fg_sum = np.zeros((height, width), np.float32)
    heat_sum = np.zeros((height, width), np.float32)
    w_sum = np.zeros((height, width), np.float32)
    probs_sum: np.ndarray | None = None
    emb_sum: np.ndarray | None = None
    origins = [(r, c) for r in rows for c in cols]
    with torch.inference_mode():
        for start in range(0, len(origins), batch_size):
            batch = origins[start:start + batch_size]
            tiles = torch.stack([tensor[:, r:r + wh, c:c + ww] for r, c in batch]).to(dev)
            fg, heat, probs, emb = _to_numpy(model(tiles))
            for k, (r, c) in enumerate(batch):
                fg_sum[r:r + wh, c:c + ww] += fg[k] * weight
                heat_sum[r:r + wh, c:c + ww] += heat[k] * weight
                w_sum[r:r + wh, c:c + ww] += weight
            probs_sum = probs.sum(0) if probs_sum is None else probs_sum + probs.sum(0)
            emb_sum = emb.sum(0) if emb_sum is None else emb_sum + emb.sum(0)
    n = np.float32(len(origins))  # equal-area windows: the area-weighted mean is the plain mean
    return Maps(fg_sum / w_sum, heat_sum / w_sum, (probs_sum / n).astype(np.float32),
                (emb_sum / n).astype(np.float32))


def _to_numpy(out) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(foreground (N, h, w), heatmap (N, h, w), image probs (N, C), embedding (N, D)) float32 numpy."""
    fg = torch.softmax(out.seg.float(), dim=1)[:, 1]
    heat = torch.sigmoid(out.heatmap.float())[:, 0]
    probs = torch.softmax(out.image_logits.float(), dim=1)
    return tuple(t.detach().cpu().numpy().astype(np.float32, copy=False)  # type: ignore[return-value]
                 for t in (fg, heat, probs, out.embedding.float()))
