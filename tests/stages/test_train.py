"""Stage ``train`` on a small synthetic project: model folder, card, training log, student tables; bad input lines."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from skimage.draw import disk
from typer.testing import CliRunner

from flows.cli import app
from nucleate.annotations import centroids_xy, points_table
from nucleate.config import Params
from nucleate.io import read_labels, read_table, write_image, write_labels, write_table
from nucleate.models import load_model
from tasks import ingest
from tasks import select as select_stage
from tasks import train as train_stage

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RADIUS = 8  # nucleus radius of the synthetic images (pseudomask.nucleus_radius_px in the tests' params)




def _image(seed: int, size=(100, 120)):
    rng = np.random.default_rng(seed)
    truth = np.zeros(size, np.int32)
    centres = []
    while len(centres) < 8:
        c = rng.uniform(RADIUS + 2, np.array(size[::-1]) - RADIUS - 2)
        if all(np.hypot(*(c - o)) > 2 * RADIUS + 4 for o in centres):
            centres.append(c)
            rr, cc = disk((c[1], c[0]), RADIUS, shape=size)
            truth[rr, cc] = len(centres)
    image = (rng.normal(600, 30, size) + 1500 * (truth > 0)).clip(0, 65535).astype(np.uint16)
    return image, truth


@pytest.fixture
def project(tmp_path, monkeypatch):
    """images/{pool,gold}, masks mirroring them, a manifest and ground-truth points of the pool images."""
    monkeypatch.chdir(tmp_path)
    rows = {"image_id": [], "x": [], "y": [], "label": [], "annotator": [], "round": [], "origin": []}
    for split, n in (("pool", 3), ("gold", 1)):
        for i in range(n):
            image, truth = _image(hash((split, i)) % 1000)
            write_image(tmp_path / "images" / split / f"{split}{i}.tif", image)
            write_labels(tmp_path / "masks" / split / f"{split}{i}.tif", truth)
    ingest.run(folder=tmp_path / "images", manifest=tmp_path / "storage/manifest.parquet")
    manifest = read_table("manifest", tmp_path / "storage/manifest.parquet").to_pylist()
    for entry in manifest:
        if entry["split"] != "pool":
            continue
        _, xy = centroids_xy(_read_truth(tmp_path, entry["path"]))
        for x, y in xy:
            for key, value in (("image_id", entry["image_id"]), ("x", x), ("y", y), ("label", "nucleus"),
                               ("annotator", "a"), ("round", 1), ("origin", "manual")):
                rows[key].append(value)
    write_table("points", points_table(rows), tmp_path / "storage/consensus.parquet")
    params = Params()
    params = dataclasses.replace(
        params,
        model=dataclasses.replace(params.model, width=8, nucleus_radius_px=4.0),
        train=dataclasses.replace(params.train, epochs=2, steps_per_epoch=2, batch_size=2, patch_px=32, val_every=1,
                                  kd_unlabeled=1),
        donuseg=dataclasses.replace(params.donuseg, start_epoch=1, refresh_epochs=1),
        pseudomask=dataclasses.replace(params.pseudomask, nucleus_radius_px=float(RADIUS)),
    )
    return tmp_path, params


def _read_truth(root, rel):
    return read_labels(root / "masks" / rel)


def _run(root, params, **kw):
    paths = dict(manifest=root / "storage/manifest.parquet", points=root / "storage/consensus.parquet",
                 out=root / "storage/model", masks=root / "masks", checkpoints=root / "storage/checkpoints",
                 student_probs=root / "storage/student_probs.parquet",
                 student_features=root / "storage/student_features.parquet")
    paths.update(kw)
    return train_stage.run(params.model, params.train, params.donuseg, params.pseudomask, params.predict,
                           params.teacher.classes, params.seed, **paths)


def test_train_writes_the_model_card_log_and_student_tables(project, line_log):
    root, params = project
    report = _run(root, params, log=line_log)
    assert report.images == 3 and report.points == 24 and report.epochs == 2 and report.gold_dice is not None
    assert any("no teacher probabilities" in line for line in line_log.lines)
    assert any("making them in memory" in line for line in line_log.lines)
    loaded = load_model(root / "storage/model")
    assert loaded.extra["nucleus_radius_px"] == 4.0 and loaded.extra["data_nucleus_radius_px"] == RADIUS
    assert loaded.extra["heatmap_trained"] is True and loaded.extra["round"] == 1
    card = json.loads((root / "storage/model/model_card.json").read_text())
    assert card["round"] == 1 and card["images"] == 3 and card["points"] == 24 and card["device"] == "cpu"
    assert card["params"]["train"]["supervision"] == "donuseg" and len(card["data"]["images"]) == 3
    assert card["torch"] == torch.__version__
    assert card["nucleus_radius_px"] == 4.0 and card["data_nucleus_radius_px"] == RADIUS
    log_rows = (root / "storage/model/training.csv").read_text().splitlines()
    assert log_rows[0].startswith("epoch,loss,seg,pseudo") and len(log_rows) == 3
    probs = read_table("student_probs", root / "storage/student_probs.parquet")
    features = read_table("student_features", root / "storage/student_features.parquet")
    assert probs.num_rows == features.num_rows == 3  # the pool images
    assert (root / "storage/checkpoints" / train_stage.CHECKPOINT_FILE).is_file()
    # the tables are what select.space: student and the feature strategies read
    for strategy in ("pcoreset", "coreset", "badge"):
        chosen = select_stage.run(
            dataclasses.replace(params.select, strategy=strategy, space="student", budget=1), params.seed,
            manifest=root / "storage/manifest.parquet", probs=root / "storage/student_probs.parquet",
            features=root / "storage/student_features.parquet", out=root / f"storage/selection_{strategy}.parquet")
        assert len(chosen.image_ids) == 1, strategy


def test_full_supervision_trains_on_masks_and_resume_continues(project, line_log):
    root, params = project
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, supervision="full"))
    report = _run(root, params, points=None)
    assert report.images == 3 and report.supervision == "full"
    again = _run(root, params, points=None, resume=True, log=line_log)
    assert again.resumed_from == 2  # the finished run's checkpoint: nothing left to train
    assert any("resumed from" in line for line in line_log.lines)


def _cli(root, *args):
    result = CliRunner().invoke(app, ["train", *map(str, args)])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    return result, errors


def test_cli_bad_inputs_give_one_line_each(project):
    root, _ = project
    (root / "params.yaml").write_text("model:\n  width: 8\ntrain:\n  epochs: 1\n  steps_per_epoch: 1\n")
    result, errors = _cli(root, "--manifest", root / "nope.parquet")
    assert result.exit_code == 1 and len(errors) == 1 and "nucleate ingest" in errors[0]
    empty = points_table({k: [] for k in ("image_id", "x", "y", "label", "annotator", "round", "origin")})
    write_table("points", empty, root / "empty.parquet")
    result, errors = _cli(root, "--points", root / "empty.parquet")
    assert result.exit_code == 1 and len(errors) == 1 and "no pool image has points" in errors[0]
    (root / "params.yaml").write_text("train:\n  supervision: full\n")
    result, errors = _cli(root)
    assert result.exit_code == 1 and len(errors) == 1 and "--masks" in errors[0]
    assert not (root / "storage/model").exists()
