"""Stage evaluate on tiny synthetic masks: exact and known-wrong predictions, the per-round learning curve,
and one `error:` line (nothing written) for each bad input."""

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from flows.cli import app
from nucleate.config import EvaluateParams
from nucleate.io import MissingInput, write_labels, write_table
from tasks import evaluate
from tasks.evaluate import CURVE_COLUMNS, EvaluateError

REPO = Path(__file__).resolve().parents[2]
PARAMS = EvaluateParams()  # params.yaml values: IoU > 0.5, match radius 6 px
SHAPE = (40, 64)
IMAGES = {"gold/a.tif": "gold", "gold/b.png": "gold", "test/c.tif": "test", "test/d.tif": "test",
          "pool/e.tif": "pool"}


def _square(labels, top, left, value, size=10):
    labels[top:top + size, left:left + size] = value
    return labels


def _truth():
    """Two squares per image, 30 px apart: ids 1 and 2."""
    return _square(_square(np.zeros(SHAPE, np.int32), 10, 10, 1), 10, 40, 2)


def _merged():
    """One prediction covering both true squares of :func:`_truth`: id 1."""
    return _square(_square(np.zeros(SHAPE, np.int32), 10, 10, 1), 10, 40, 1)


def _shifted():
    """Both squares moved 2 px right: IoU 80/120 each, centroids 2 px away."""
    return _square(_square(np.zeros(SHAPE, np.int32), 10, 12, 1), 10, 42, 2)


def _write_set(folder, labels_of):
    for rel in IMAGES:
        labels = labels_of(rel)
        if labels is not None:
            write_labels((folder / rel).with_suffix(".tif"), labels)


@pytest.fixture
def project(tmp_path):
    """Manifest (2 gold, 2 test, 1 pool), GT masks, exact predictions, a model card of round 1."""
    rows = [{"image_id": f"{i:032x}", "path": rel, "width": SHAPE[1], "height": SHAPE[0], "channels": 1,
             "dtype": "uint8", "split": split, "bytes": 1} for i, (rel, split) in enumerate(IMAGES.items())]
    write_table("manifest", pa.Table.from_pylist(rows), tmp_path / "manifest.parquet", metadata={"root": "images"})
    _write_set(tmp_path / "masks", lambda rel: _truth())
    _write_set(tmp_path / "predictions", lambda rel: _truth())
    (tmp_path / "model").mkdir()
    _card(tmp_path, round=1, images=3, points=50)
    return {"predictions": tmp_path / "predictions", "masks": tmp_path / "masks",
            "manifest": tmp_path / "manifest.parquet", "model": tmp_path / "model",
            "out": tmp_path / "out" / "metrics.json", "plots": tmp_path / "out" / "plots"}


def _card(root, **values):
    (root / "model" / "model_card.json").write_text(json.dumps({"supervision": "qu2019", **values}))


def _curve(paths):
    with open(paths["plots"] / "learning_curve.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_exact_predictions_score_one_on_gold_and_test_and_pool_is_not_scored(project, line_log):
    report = evaluate.run(PARAMS, **project, log=line_log)
    metrics = json.loads(project["out"].read_text())
    assert metrics["round"] == 1 and metrics["model"] == {"round": 1, "supervision": "qu2019", "images": 3,
                                                          "points": 50}
    assert set(metrics["splits"]) == {"gold", "test"}
    for split in ("gold", "test"):
        s = metrics["splits"][split]
        assert s["n_images"] == 2 and s["n_gt_nuclei"] == 4 and s["n_pred"] == 4
        for key in evaluate.IMAGE_METRICS:
            assert s[key] == 1.0, (split, key)
    assert [i["path"] for i in metrics["images"]] == ["gold/a.tif", "gold/b.png", "test/c.tif", "test/d.tif"]
    assert report.splits == metrics["splits"] and report.round == 1 and report.images == 4 and report.rounds == 1
    assert report.lines()[0].startswith("gold: 2 images, 4 nuclei (4 predicted): Dice 1.000")
    assert line_log.lines == []
    rows = _curve(project)
    assert list(rows[0]) == list(CURVE_COLUMNS)
    assert rows == [{"round": "1", "images": "3", "clicks": "50",
                     **{c: "1.0" for c in CURVE_COLUMNS if c.startswith(("gold_", "test_"))}}]
    assert (project["plots"] / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_merged_and_shifted_predictions_give_the_values_computed_by_hand(project, line_log):
    wrong = {"gold/b.png": _merged(), "test/d.tif": _shifted()}
    _write_set(project["predictions"], lambda rel: wrong.get(rel, _truth()))
    evaluate.run(PARAMS, **project, log=line_log)
    metrics = json.loads(project["out"].read_text())
    by_path = {i["path"]: i for i in metrics["images"]}
    # merge of two 100 px squares into one 200 px instance: pixels right, each pair IoU 100/200 (not > 0.5)
    merged = by_path["gold/b.png"]
    assert merged["dice"] == 1.0 and merged["aji"] == 0.5 and merged["object_dice"] == pytest.approx(2 / 3, abs=1e-4)
    assert merged["pq"] == merged["dq"] == merged["sq"] == 0.0 and merged["n_pred"] == 1
    assert merged["f1"] == 0.0 and merged["precision"] == 0.0 and merged["recall"] == 0.0  # centroid 15 px off
    # 2 px shift: intersection 80, union 120 per square
    shifted = by_path["test/d.tif"]
    assert shifted["dice"] == 0.8 and shifted["object_dice"] == 0.8
    assert shifted["aji"] == pytest.approx(2 / 3, abs=1e-4) and shifted["sq"] == pytest.approx(2 / 3, abs=1e-4)
    assert shifted["dq"] == 1.0 and shifted["f1"] == 1.0
    gold, test = metrics["splits"]["gold"], metrics["splits"]["test"]
    assert gold["aji"] == 0.75 and gold["pq"] == 0.5 and gold["f1"] == 0.5 and gold["n_pred"] == 3
    assert test["dice"] == 0.9 and test["aji"] == pytest.approx(5 / 6, abs=1e-4)  # means over images
    assert metrics["averaging"].startswith("mean over images")


def test_learning_curve_grows_one_row_per_round_and_a_rerun_replaces_its_row(project, tmp_path, line_log):
    evaluate.run(PARAMS, **project, log=line_log)
    _card(tmp_path, round=3, images=9, points=150)
    _write_set(project["predictions"], lambda rel: _shifted())
    evaluate.run(PARAMS, **project, log=line_log)
    _card(tmp_path, round=2, images=6, points=100)
    evaluate.run(PARAMS, **project, log=line_log)
    rows = _curve(project)
    assert [(r["round"], r["images"], r["clicks"]) for r in rows] == [("1", "3", "50"), ("2", "6", "100"),
                                                                       ("3", "9", "150")]
    assert rows[2]["test_dice"] == "0.8"
    _write_set(project["predictions"], lambda rel: _truth())  # round 2 evaluated again with better predictions
    report = evaluate.run(PARAMS, **project, log=line_log)
    rows = _curve(project)
    assert [r["round"] for r in rows] == ["1", "2", "3"] and report.rounds == 3
    assert rows[1]["test_dice"] == "1.0" and rows[2]["test_dice"] == "0.8"
    assert (project["plots"] / "learning_curve.png").stat().st_size > 1000
    assert sorted(p.name for p in project["plots"].iterdir()) == ["learning_curve.csv", "learning_curve.png"]


def test_missing_model_card_and_unscorable_images_are_warnings_not_errors(project, tmp_path, line_log):
    (tmp_path / "model" / "model_card.json").unlink()
    (project["predictions"] / "test" / "d.tif").unlink()
    (project["masks"] / "gold" / "a.tif").unlink()
    report = evaluate.run(PARAMS, **project, log=line_log)
    assert report.round is None and report.images == 2
    assert any("no model card" in line for line in line_log.lines)
    assert "gold: 1 image(s) without a mask not scored (first: gold/a.tif)" in line_log.lines
    assert "test: 1 image(s) without a prediction not scored (first: test/d.tif)" in line_log.lines
    metrics = json.loads(project["out"].read_text())
    assert metrics["round"] is None and metrics["model"]["points"] is None
    evaluate.run(PARAMS, **project, log=line_log)  # the unknown round replaces its own row too
    assert [(r["round"], r["clicks"]) for r in _curve(project)] == [("", "")]


def _invoke(project, **overrides):
    paths = {**project, **overrides}
    args = ["evaluate", *(x for k, v in paths.items() for x in (f"--{k}", str(v))), "--params",
            str(REPO / "params.yaml")]
    return CliRunner().invoke(app, args)


def _snapshot(project):
    files = [project["out"], project["plots"] / "learning_curve.csv", project["plots"] / "learning_curve.png"]
    return {f: f.read_bytes() for f in files}


def _write(path, text):
    path.write_text(text)


def _float_prediction(project):
    import tifffile

    tifffile.imwrite(project["predictions"] / "test" / "c.tif", np.zeros(SHAPE, np.float32))


BAD = {
    "missing predictions": (lambda p: {"predictions": p["predictions"].parent / "nope"},
                            ["predictions not found", "nucleate predict"]),
    "missing model": (lambda p: {"model": p["model"].parent / "no-model"}, ["model not found", "nucleate train"]),
    "missing masks": (lambda p: {"masks": p["masks"].parent / "no-masks"}, ["masks folder not found", "--masks"]),
    "empty predictions": (lambda p: {"predictions": _empty(p)}, ["nothing to evaluate", "nucleate predict"]),
    "shape mismatch": (lambda p: write_labels(p["predictions"] / "test" / "c.tif", np.zeros((8, 8), np.int32)),
                       ["predictions/test/c.tif", "masks/test/c.tif", "shape"]),
    "float prediction": (_float_prediction, ["predictions/test/c.tif", "integer"]),
    "corrupt model card": (lambda p: _write(p["model"] / "model_card.json", "{round: 1"),
                           ["model_card.json", "not a JSON model card"]),
    "foreign learning curve": (lambda p: _write(p["plots"] / "learning_curve.csv", "a,b\n1,2\n"),
                               ["learning_curve.csv", "no 'round' column"]),
}


def _empty(project):
    folder = project["predictions"].parent / "empty"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gives_one_error_line_and_leaves_the_outputs_untouched(project, case):
    first = _invoke(project)
    assert first.exit_code == 0, first.output
    make, words = BAD[case]
    overrides = make(project) or {}
    before = _snapshot(project)
    result = _invoke(project, **overrides)
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = [x for x in result.output.splitlines() if x.strip()]
    assert line.startswith("error: ")
    for word in words:
        assert word in line, (case, line)
    assert _snapshot(project) == before
    assert sorted(p.name for p in project["plots"].iterdir()) == ["learning_curve.csv", "learning_curve.png"]


def test_run_raises_the_documented_types(project, tmp_path):
    with pytest.raises(MissingInput):
        evaluate.run(PARAMS, **{**project, "predictions": tmp_path / "nope"})
    with pytest.raises(EvaluateError, match="nothing to evaluate"):
        evaluate.run(PARAMS, **{**project, "predictions": _empty(project)})
    assert not project["out"].exists() and not project["plots"].exists()


def test_masks_option_is_required():
    result = CliRunner().invoke(app, ["evaluate"])
    assert result.exit_code == 2 and "--masks" in result.output
