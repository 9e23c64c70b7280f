"""Stage ``evaluate``: predicted instances vs full ground truth on the gold and test images -> metrics + learning curve.

Inputs:

* ``predictions`` (default ``storage/predictions``, written by ``nucleate predict``): one ``int32`` instance
  label image per image, mirroring the image's path relative to the image folder with suffix ``.tif``
  (image ``test/a.png`` -> ``predictions/test/a.tif``); anything else there (``points.parquet``) is ignored.
* ``masks``: ground-truth instance masks mirroring the same relative paths (``.tif``/``.tiff``/``.png``;
  :func:`nucleate.io.find_labels`), e.g. ``storage/sample/masks`` of ``nucleate sample-data``.
* ``manifest``: which image is in which split. Only the ``gold`` and ``test`` splits are evaluated (the
  pool is what gets annotated and trained on), plain images only (whole-slide tiles have no masks); an
  image of those splits without a mask or a prediction is not scored (one warning line per split says how
  many).
* ``model`` (default ``storage/model``): only its ``model_card.json`` is read, for the round, the number of
  training images and of clicks (keys ``round``, ``images``, ``points``); a missing card or key leaves
  them empty, with a warning.

Per image, one :func:`nucleate.metrics.segmentation_scores` call gives pixel Dice, object Dice, AJI and
PQ = DQ x SQ (IoU > ``evaluate.iou_threshold``), and :func:`nucleate.metrics.match_points` on the instance
centroids within ``evaluate.match_radius_px`` pixels gives detection precision, recall and F1. Per split the
scores are **means over images** (as Qu et al. 2019), with the counts of images, true and predicted nuclei.

Outputs, written only once every image is scored (a bad input writes nothing; each file is replaced atomically):

* ``out`` (default ``storage/metrics.json``, the DVC metrics file): ``{"round", "model": {round, supervision,
  images, points}, "averaging", "params", "splits": {"gold": {...}, "test": {...}}, "images": [{path,
  split, dice, ...}]}``.
* ``plots/learning_curve.csv``: one row per round (:data:`CURVE_COLUMNS`: round, images, clicks and
  ``<split>_<metric>`` for the splits and :data:`CURVE_METRICS`); the row of this round replaces an existing
  one (re-evaluating a round does not add a row), rows sorted by round, rounds of unknown number last.
* ``plots/learning_curve.png``: every ``<split>_<metric>`` column against the clicks, points labeled by round.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import typer

from nucleate.annotations import centroids_xy
from nucleate.config import EvaluateParams
from nucleate.io import LAYOUT, MissingInput, atomic_path, atomic_write_text, find_labels, read_labels, read_table
from nucleate.io.layout import produced_by
from nucleate.metrics import match_points, segmentation_scores
from tasks._stage import Report, StageError, load_params_or_exit, logger, run_alone, stage_errors

__all__ = [
    "CURVE_COLUMNS",
    "CURVE_METRICS",
    "CURVE_NAME",
    "EVALUATED_SPLITS",
    "IMAGE_METRICS",
    "EvaluateError",
    "EvaluateReport",
    "command",
    "main",
    "read_curve",
    "run",
]

#: the manifest splits scored, in this order
EVALUATED_SPLITS = ("gold", "test")
#: per-image scores (all in 0..1), averaged per split
IMAGE_METRICS = ("dice", "object_dice", "aji", "pq", "dq", "sq", "f1", "precision", "recall")
#: the scores of each split kept in the learning curve
CURVE_METRICS = ("dice", "aji", "pq", "f1")
CURVE_COLUMNS = ("round", "images", "clicks", *(f"{s}_{m}" for s in EVALUATED_SPLITS for m in CURVE_METRICS))
#: file names below ``plots`` (learning_curve.csv, learning_curve.png)
CURVE_NAME = "learning_curve"
_CARD = "model_card.json"
_DIGITS = 4


class EvaluateError(StageError):
    """Bad evaluation input: nothing to score, shapes that differ, a malformed model card or learning curve."""


@dataclass
class EvaluateReport(Report):
    """What one run scored: ``splits`` maps split -> mean scores and counts; ``rounds`` = rows of the curve."""

    out: Path
    plots: Path
    round: int | None = None
    clicks: int | None = None
    images: int = 0
    rounds: int = 0
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """One line per split, then where the results went."""
        lines = []
        for split, s in self.splits.items():
            lines.append(
                f"{split}: {s['n_images']} images, {s['n_gt_nuclei']} nuclei ({s['n_pred']} predicted): "
                f"Dice {s['dice']:.3f}, object Dice {s['object_dice']:.3f}, AJI {s['aji']:.3f}, PQ {s['pq']:.3f} "
                f"(DQ {s['dq']:.3f}, SQ {s['sq']:.3f}), detection F1 {s['f1']:.3f} (means over images)"
            )
        name = "unknown round" if self.round is None else f"round {self.round}"
        clicks = "" if self.clicks is None else f", {self.clicks} clicks"
        lines.append(f"evaluate: {name}{clicks}, {self.images} images -> {self.out}, "
                     f"{self.plots / CURVE_NAME}.csv/.png ({self.rounds} round(s))")
        return lines


def run(
    evaluate: EvaluateParams,
    *,
    predictions: str | Path,
    masks: str | Path,
    manifest: str | Path,
    model: str | Path,
    out: str | Path,
    plots: str | Path,
    log: logging.Logger | None = None,
) -> EvaluateReport:
    """Score the predictions of the gold and test images against ``masks``; write ``out`` and the learning curve.

    ``evaluate`` is ``params.evaluate``; the paths are described in the module docstring. Raises
    :class:`MissingInput` for a missing predictions folder, model folder, masks folder or manifest,
    :class:`EvaluateError` when no image can be scored, a prediction's shape differs from its mask's or the
    model card / existing learning curve is malformed, :class:`nucleate.io.ImageError` for an unreadable or
    non-integer label image and :class:`nucleate.io.TableError` for a malformed manifest; then nothing is written.
    """
    log = log or logger("evaluate")
    pred_dir = _folder("predictions", predictions)
    model_dir = _folder("model", model)
    masks_dir = Path(masks)
    if not masks_dir.is_dir():
        raise MissingInput(f"{masks_dir}: ground-truth masks folder not found; pass --masks a folder of instance "
                           "masks mirroring the image folder (the sample's: storage/sample/masks, from "
                           "`nucleate sample-data`)")
    manifest_path = LAYOUT.require("manifest", manifest)
    out, plots = Path(out), Path(plots)
    card = _model_card(model_dir, log)

    manifest_table = read_table("manifest", manifest_path)
    tile_column = ["slide_id"] if "slide_id" in manifest_table.column_names else []
    table = manifest_table.select(["path", "split", *tile_column]).to_pylist()
    # plain images only: whole-slide tiles have no ground-truth masks (nor per-tile predictions)
    entries = sorted((r for r in table if r["split"] in EVALUATED_SPLITS and r.get("slide_id") is None),
                     key=lambda r: (EVALUATED_SPLITS.index(r["split"]), r["path"]))
    scored: list[dict[str, Any]] = []
    unscored: dict[str, dict[str, list[str]]] = {s: {"mask": [], "prediction": []} for s in EVALUATED_SPLITS}
    for entry in entries:
        rel, split = entry["path"], entry["split"]
        mask_path, pred_path = find_labels(masks_dir, rel), find_labels(pred_dir, rel)
        if mask_path is None or pred_path is None:
            unscored[split]["mask" if mask_path is None else "prediction"].append(rel)
            continue
        scored.append(_score_image(rel, split, mask_path, pred_path, evaluate))
    if not scored:
        counts = {s: sum(r["split"] == s for r in entries) for s in EVALUATED_SPLITS}
        raise EvaluateError(
            f"nothing to evaluate: no gold or test image of {manifest_path} ({counts['gold']} gold, "
            f"{counts['test']} test) has both a prediction under {pred_dir} and a mask under {masks_dir}; "
            "run `nucleate predict` on the gold and test images and pass --masks the ground-truth masks folder"
        )
    for split, missing in unscored.items():
        for what, rels in missing.items():
            if rels:
                log.warning(f"{split}: {len(rels)} image(s) without a {what} not scored (first: {rels[0]})")

    splits = {s: _split_means([r for r in scored if r["split"] == s]) for s in EVALUATED_SPLITS}
    splits = {s: v for s, v in splits.items() if v is not None}
    metrics = {
        "round": card["round"],
        "model": card,
        "averaging": "mean over images (Qu et al. 2019)",
        "params": {"iou_threshold": evaluate.iou_threshold, "match_radius_px": evaluate.match_radius_px},
        "splits": splits,
        "images": scored,
    }
    curve_path = plots / f"{CURVE_NAME}.csv"
    rows, columns = read_curve(curve_path)
    rows = _merge_row(rows, _curve_row(card, splits))
    # everything is computed: write the plot, the table, then the metrics (each atomically)
    _plot_curve(rows, plots / f"{CURVE_NAME}.png", log)
    atomic_write_text(curve_path, _curve_csv(rows, columns))
    atomic_write_text(out, json.dumps(metrics, indent=1) + "\n")
    return EvaluateReport(out=out, plots=plots, round=card["round"], clicks=card["points"], images=len(scored),
                          rounds=len(rows), splits=splits)


def _folder(name: str, path: str | Path) -> Path:
    folder = LAYOUT.require(name, path)
    if not folder.is_dir():
        raise EvaluateError(f"{folder}: expected the {name} folder, found a file; produce it with {produced_by(name)}")
    return folder


def _model_card(model_dir: Path, log: logging.Logger) -> dict[str, Any]:
    """``{round, supervision, images, points}`` from the model card; None for what it lacks (with a warning)."""
    path = model_dir / _CARD
    keys = ("round", "supervision", "images", "points")
    if not path.is_file():
        log.warning(f"{path}: no model card; round, images and clicks unknown (left empty in the learning curve)")
        return dict.fromkeys(keys)
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvaluateError(f"{path}: not a JSON model card ({exc}); re-run `nucleate train`") from None
    if not isinstance(card, dict):
        raise EvaluateError(f"{path}: expected a JSON object, not {type(card).__name__}; re-run `nucleate train`")
    info: dict[str, Any] = {}
    lacking = []
    for key in keys:
        value = card.get(key)
        ok = isinstance(value, str) if key == "supervision" else (
            isinstance(value, int) and not isinstance(value, bool) and value >= 0)
        info[key] = value if ok else None
        if not ok and key != "supervision":
            lacking.append(key)
    if lacking:
        log.warning(f"{path}: no valid {', '.join(lacking)}; left empty in the metrics and the learning curve")
    return info


def _score_image(rel: str, split: str, mask_path: Path, pred_path: Path, p: EvaluateParams) -> dict[str, Any]:
    true, pred = read_labels(mask_path), read_labels(pred_path)
    if true.shape != pred.shape:
        raise EvaluateError(f"prediction {pred_path} has shape {pred.shape} but its mask {mask_path} has "
                            f"{true.shape}; re-run `nucleate predict` on the images these masks belong to")
    for path, labels in ((mask_path, true), (pred_path, pred)):
        if labels.size and labels.min() < 0:
            raise EvaluateError(f"{path}: negative instance id {int(labels.min())}; ids are 0 (background) or positive")
    s = segmentation_scores(true, pred, iou_threshold=p.iou_threshold)
    match = match_points(centroids_xy(true)[1], centroids_xy(pred)[1], p.match_radius_px)
    values = {"dice": s.dice, "object_dice": s.object_dice, "aji": s.aji, "pq": s.pq.pq, "dq": s.pq.dq,
              "sq": s.pq.sq, "f1": match.f1, "precision": match.precision, "recall": match.recall}
    return {"path": rel, "split": split, **{k: round(float(v), _DIGITS) for k, v in values.items()},
            "n_gt_nuclei": s.n_true, "n_pred": s.n_pred}


def _split_means(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not rows:
        return None
    means = {k: round(float(np.mean([r[k] for r in rows])), _DIGITS) for k in IMAGE_METRICS}
    return {**means, "n_images": len(rows), "n_gt_nuclei": sum(r["n_gt_nuclei"] for r in rows),
            "n_pred": sum(r["n_pred"] for r in rows)}


def _curve_row(card: dict[str, Any], splits: dict[str, dict[str, Any]]) -> dict[str, str]:
    row = {"round": card["round"], "images": card["images"], "clicks": card["points"]}
    for split in EVALUATED_SPLITS:
        for metric in CURVE_METRICS:
            row[f"{split}_{metric}"] = splits.get(split, {}).get(metric)
    return {k: "" if v is None else str(v) for k, v in row.items()}


def read_curve(path: Path) -> tuple[list[dict[str, str]], list[str]]:
    """Rows (str values) and columns of an existing learning curve (none yet: no rows, :data:`CURVE_COLUMNS`)."""
    columns = list(CURVE_COLUMNS)
    if not path.exists():
        return [], columns
    try:
        reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline=""))
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise EvaluateError(f"{path}: unreadable learning curve ({exc}); move it away to start a new one") from None
    if reader.fieldnames is None:
        return [], columns
    if "round" not in reader.fieldnames:
        raise EvaluateError(f"{path}: not a learning curve (no 'round' column); move it away to start a new one")
    for line, row in enumerate(rows, start=2):
        value = row.get("round") or ""
        if value and not value.isdigit():
            raise EvaluateError(f"{path}: line {line}: round {value!r} is not a whole number; fix or remove the row")
    columns += [c for c in reader.fieldnames if c and c not in columns]  # keep columns an older version wrote
    return rows, columns


def _merge_row(rows: list[dict[str, str]], new: dict[str, str]) -> list[dict[str, str]]:
    """``rows`` with the row of ``new``'s round replaced by (or added as) ``new``, sorted by round."""
    kept = [r for r in rows if (r.get("round") or "") != new["round"]]
    return sorted([*kept, new], key=lambda r: (not r.get("round"), int(r.get("round") or 0)))


def _curve_csv(rows: list[dict[str, str]], columns: list[str]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows({c: r.get(c) or "" for c in columns} for r in rows)
    return buffer.getvalue()


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _plot_curve(rows: list[dict[str, str]], path: Path, log: logging.Logger) -> None:
    """Every ``<split>_<metric>`` column against the clicks (rows without a click count are left out)."""
    from matplotlib.figure import Figure  # here, not at import: every `nucleate` command imports this module

    fig = Figure(figsize=(7.5, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    known = [r for r in rows if _number(r.get("clicks")) is not None]
    if len(known) < len(rows):
        log.warning(f"learning curve: {len(rows) - len(known)} round(s) without a click count left out of {path}")
    colors = dict(zip(CURVE_METRICS, ("tab:blue", "tab:orange", "tab:green", "tab:red"), strict=True))
    for split, style in zip(EVALUATED_SPLITS, ("--", "-"), strict=True):
        for metric in CURVE_METRICS:
            xy = [(_number(r["clicks"]), _number(r.get(f"{split}_{metric}"))) for r in known]
            xy = [(x, y) for x, y in xy if y is not None]
            if xy:
                ax.plot(*zip(*xy, strict=True), style, marker="o", color=colors[metric], label=f"{split} {metric}")
    for r in known:
        if r.get("round"):
            ax.annotate(f"r{r['round']}", (_number(r["clicks"]), 1.0), textcoords="offset points", xytext=(0, 4),
                        ha="center", fontsize=8)
    if not known:
        ax.text(0.5, 0.5, "no round with a known click count yet", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("clicks (points annotated)")
    ax.set_ylabel("score (mean over images)")
    ax.set_ylim(0.0, 1.08)
    ax.set_title("learning curve: gold (dashed) and test (solid)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8, ncols=2)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def command(
    masks: Path = typer.Option(..., help="Ground-truth instance masks mirroring the image folder (required)."),
    predictions: Path = typer.Option(LAYOUT.predictions, help="Predicted instances (`nucleate predict`)."),
    manifest: Path = typer.Option(LAYOUT.manifest, help="Manifest table: the split of every image."),
    model: Path = typer.Option(LAYOUT.model, help="Model folder; its model_card.json gives round and clicks."),
    out: Path = typer.Option(LAYOUT.metrics, help="Write the metrics here (JSON)."),
    plots: Path = typer.Option(LAYOUT.plots, help="Folder of learning_curve.csv / .png (the CSV grows per round)."),
    params: Path = typer.Option(Path("params.yaml"), help="params file (section evaluate)."),
) -> None:
    """Score predictions of the gold and test images (Dice, AJI, PQ, detection F1) and grow the learning curve."""
    cfg = load_params_or_exit(params)
    with stage_errors():
        report = run(cfg.evaluate, predictions=predictions, masks=masks, manifest=manifest, model=model, out=out,
                     plots=plots)
    for line in report.lines():
        typer.echo(line)


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.evaluate --masks DIR [--predictions ...] [--out ...]``."""
    run_alone(command, argv)


if __name__ == "__main__":
    main()
