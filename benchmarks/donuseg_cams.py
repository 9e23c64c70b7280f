"""How good are a trained student's encoder-block Grad-CAMs as DoNuSeg pseudo labels? (pool images only)

    .venv/bin/python benchmarks/donuseg_cams.py --model storage/model [--sample storage/sample] [--images 8]

For each of the first ``--images`` pool images of the sample (never gold or test): the pseudo-mask M from the
ground-truth centroids (params.yaml ``pseudomask``), the student's 4 Grad-CAMs (:func:`nucleate.models.grad_cam`)
and, per block and threshold theta, the share of M's *ignored* pixels that C_k = CAM_k >= theta labels as the
ground truth does (``acc_ignored``: what a ``fill_ignore`` pseudo label gets right) and C_k's IoU with the
ground-truth nuclei. Then, per block-similarity rule (``iou``, ``miou``, ``coverage``), which block
:func:`nucleate.training.select_block` picks for each image and the mean ``acc_ignored`` of the picks.
References in the same run: all ignored pixels called background, and the student's own prediction.
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from nucleate.annotations import centroids_xy
from nucleate.config import load_params
from nucleate.io import read_image, read_labels
from nucleate.models import grad_cam, load_model, network_input, resize_labels
from nucleate.pseudomask import IGNORE, from_points
from nucleate.training import select_block

ROOT = Path(__file__).resolve().parents[1]
THETAS = (0.1, 0.2, 0.3, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(ROOT / "storage/model"))
    parser.add_argument("--sample", default=str(ROOT / "storage/sample"))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(ROOT / "params.yaml")
    loaded = load_model(args.model)
    scale = loaded.extra["nucleus_radius_px"] / loaded.extra["data_nucleus_radius_px"]
    per_block: dict[str, list[tuple[float, float]]] = {}
    picks: dict[str, list[tuple[int, float]]] = {}
    references: dict[str, list[float]] = {"all_background": [], "student_prediction": []}
    files = sorted((Path(args.sample) / "images" / "pool").glob("*.tif"))[:args.images]
    for path in files:
        image = read_image(path)
        truth = read_labels(Path(args.sample) / "masks" / "pool" / path.name)
        pm = from_points(image, centroids_xy(truth)[1], params=params.pseudomask, seed=params.seed)
        x = network_input(image, scale)
        shape = x.shape[1:]
        initial = resize_labels(pm.semantic, shape)
        nuclei = resize_labels(truth, shape) > 0
        ignored = initial == IGNORE
        with torch.inference_mode():
            seg = loaded.model(torch.from_numpy(x[None])).seg[0]
        references["all_background"].append(float((~nuclei[ignored]).mean()))
        references["student_prediction"].append(float(((seg[1] > seg[0]).numpy()[ignored] == nuclei[ignored]).mean()))
        cams = [c[0].numpy() for c in grad_cam(loaded.model, torch.from_numpy(x[None]))]
        acc_at_default = []
        for k, cam in enumerate(cams):
            for theta in THETAS:
                binary = cam >= theta
                iou = float((binary & nuclei).sum() / max(1, (binary | nuclei).sum()))
                acc = float((binary[ignored] == nuclei[ignored]).mean())
                per_block.setdefault(f"block{k + 1}_theta{theta}", []).append((acc, iou))
            acc_at_default.append(float(((cam >= params.donuseg.cam_threshold)[ignored] == nuclei[ignored]).mean()))
        for rule in ("iou", "miou", "coverage"):
            k, _ = select_block(cams, initial, dataclasses.replace(params.donuseg, similarity=rule))
            picks.setdefault(rule, []).append((k + 1, acc_at_default[k]))
    print(json.dumps({
        "model": str(args.model), "images": [p.name for p in files], "theta": params.donuseg.cam_threshold,
        "references_acc_ignored": {k: round(float(np.mean(v)), 4) for k, v in references.items()},
        "blocks": {k: {"acc_ignored": round(float(np.mean([a for a, _ in v])), 4),
                       "iou_nuclei": round(float(np.mean([i for _, i in v])), 4)} for k, v in per_block.items()},
        "selection": {rule: {"blocks_picked": [k for k, _ in v],
                             "acc_ignored": round(float(np.mean([a for _, a in v])), 4)} for rule, v in picks.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
