"""A small random-weight student saved as a model folder (the predict tests' model: the stage's cost and outputs,
not a trained model's accuracy)."""

from __future__ import annotations

from pathlib import Path

import torch

from nucleate.models import build_student, save_model

#: the smallest resnet student that segments (width 8, one block per stage)
SMALL = dict(width=8, depths=(1, 1, 1, 1), decoder_channels=(16, 16, 8, 8, 8), heatmap_channels=(8, 8, 8, 8, 4))


def save_random_student(out: Path, *, nucleus_radius_px: float, round: int) -> Path:
    """Seed 0, heads scaled x30 for sharper random maps (some foreground, some background); saved to ``out``."""
    torch.manual_seed(0)
    model = build_student("resnet", 3, **SMALL).eval()
    with torch.no_grad():
        model.seg_head.weight.mul_(30)
        model.heat_head.weight.mul_(30)
    extra = {"classes": ["nucleus", "micronucleus", "background"], "nucleus_radius_px": nucleus_radius_px,
             "data_nucleus_radius_px": nucleus_radius_px, "heatmap_trained": True, "supervision": "donuseg",
             "round": round}
    save_model(out, model, extra=extra)
    return out
