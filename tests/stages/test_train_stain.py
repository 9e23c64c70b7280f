"""Stage ``train`` on pseudo-H&E images with a stain section: the model records it and prediction applies it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from nucleate.annotations import centroids_xy, points_table
from nucleate.config import Params, PredictParams
from nucleate.datasets.he import pseudo_he
from nucleate.inference import segment_image
from nucleate.io import read_image, read_table, write_image, write_labels, write_table
from nucleate.models import load_model
from nucleate.stain import BUNDLED_REFERENCE
from tasks import ingest
from tasks import train as train_stage
from tests.stages.test_train import RADIUS, _image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_train_records_the_stain_and_predict_uses_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    truths = {}
    for split, n in (("pool", 2), ("gold", 1)):
        for i in range(n):
            gray, truth = _image(10 * i + len(split))
            write_image(tmp_path / "images" / split / f"{split}{i}.tif", pseudo_he(gray, rng))
            write_labels(tmp_path / "masks" / split / f"{split}{i}.tif", truth)
            truths[f"{split}/{split}{i}.tif"] = truth
    ingest.run(folder=tmp_path / "images", manifest=tmp_path / "manifest.parquet")
    rows = {"image_id": [], "x": [], "y": [], "label": "nucleus", "annotator": "a", "round": 1, "origin": "manual"}
    for entry in read_table("manifest", tmp_path / "manifest.parquet").to_pylist():
        if entry["split"] == "pool":
            _, xy = centroids_xy(truths[entry["path"]])
            rows["image_id"] += [entry["image_id"]] * len(xy)
            rows["x"] += xy[:, 0].tolist()
            rows["y"] += xy[:, 1].tolist()
    write_table("points", points_table(rows), tmp_path / "points.parquet")
    p = Params()
    stain = dataclasses.replace(p.stain, normalise="macenko", cluster_input="hematoxylin", student_input="hematoxylin")
    report = train_stage.run(
        dataclasses.replace(p.model, width=8, nucleus_radius_px=4.0),
        dataclasses.replace(p.train, epochs=1, steps_per_epoch=2, batch_size=2, patch_px=32, val_every=1),
        p.donuseg, dataclasses.replace(p.pseudomask, nucleus_radius_px=float(RADIUS)), p.predict, p.teacher.classes,
        p.seed, manifest=tmp_path / "manifest.parquet", points=tmp_path / "points.parquet", out=tmp_path / "model",
        masks=tmp_path / "masks", checkpoints=tmp_path / "ckpt", stain=stain)
    assert report.images == 2 and report.gold_dice is not None  # gold validation saw the transformed image
    loaded = load_model(tmp_path / "model")
    assert loaded.extra["stain"]["params"] == dataclasses.asdict(stain)
    assert loaded.extra["stain"]["reference"] == BUNDLED_REFERENCE.to_dict()
    card = json.loads((tmp_path / "model" / "model_card.json").read_text())
    assert card["params"]["stain"]["student_input"] == "hematoxylin"
    rgb = read_image(tmp_path / "images" / "gold" / "gold0.tif")
    seen = []
    forward = loaded.model.forward
    monkeypatch.setattr(loaded.model, "forward", lambda x, *a, **k: seen.append(x.shape[1]) or forward(x, *a, **k))
    seg = segment_image(loaded, rgb, PredictParams(device="cpu"), nucleus_radius_px=None)
    assert seen and set(seen) == {1}  # one channel in: the hematoxylin image the model was trained on, not RGB
    assert seg.labels.shape == rgb.shape[:2]
