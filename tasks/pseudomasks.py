"""Stage ``pseudomasks``: points table + manifest -> one pseudo-mask per annotated image + an index table.

Every image with at least one row in the points table gets (``out``, default ``storage/pseudomasks``)::

    semantic/<image_id>.png    uint8: 0 background, 1 nucleus, 255 ignore
    instances/<image_id>.tif   int32: 0 none, i = the nucleus of the image's i-th unique point
    index.parquet              ``pseudomask_index`` table; paths relative to this folder

Images without points get no mask (they are not annotated; ``from_points`` would return all-ignore).
Every point row counts as one nucleus whatever its ``label`` / ``origin``; points in the same pixel
collapse. Images are read from the manifest's root folder (``--images`` overrides it), one at a time.

QC gate: gold images (manifest split ``gold``) that have points and a ground-truth instance mask under
``--gold-masks`` (same relative path as the image, ``.tif``/``.png``) are done first and scored: pixel
Dice on the labeled (non-ignore) pixels - how right the supervision is - plus whole-image Dice and AJI.
If the mean labeled-pixel Dice is below ``pseudomask.min_gold_dice`` the stage fails, says which images
scored what, and writes nothing. The scores go to ``--qc`` (JSON) when given.

The output folder is built beside ``out`` and swapped in whole, so a failure (bad point, unreadable
image, QC) never leaves a half-written set of masks.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import typer

from nucleate.config import Params, ParamsError, load_params
from nucleate.io import (
    ImageError,
    TableError,
    atomic_write_text,
    read_image,
    read_labels,
    read_table,
    table_metadata,
    write_labels,
    write_table,
)
from nucleate.metrics import dice, segmentation_scores
from nucleate.pseudomask import IGNORE, METHODS, NUCLEUS, PointError, from_points
from tasks._stage import fail, run_alone

__all__ = ["PseudomaskError", "QCError", "PseudomaskReport", "run", "command", "main"]


class PseudomaskError(ValueError):
    """Bad input: a point outside its image, an image missing from the manifest or unreadable."""


class QCError(RuntimeError):
    """Gold-image pseudo-masks scored below ``pseudomask.min_gold_dice``; nothing was written."""


@dataclass
class PseudomaskReport:
    """What one run did. ``gold`` maps image_id -> scores of each gold image that was checked."""

    index: Path
    images: int = 0
    points: int = 0
    instances: int = 0
    gold: dict[str, dict[str, float]] = field(default_factory=dict)
    gold_mean_dice: float | None = None


def _gold_mask(gold_masks: Path, rel: str) -> Path | None:
    base = gold_masks / rel
    for candidate in (base, base.with_suffix(".tif"), base.with_suffix(".tiff"), base.with_suffix(".png")):
        if candidate.is_file():
            return candidate
    return None


def run(
    points: str | Path,
    manifest: str | Path,
    out: str | Path,
    *,
    params: Params | None = None,
    method: str | None = None,
    images: str | Path | None = None,
    gold_masks: str | Path | None = None,
    qc: str | Path | None = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> PseudomaskReport:
    """Write one pseudo-mask per annotated image and the index under ``out``; see the module docstring.

    ``params`` defaults to :class:`Params` defaults; ``method`` overrides ``params.pseudomask.method``.
    Raises :class:`PseudomaskError` for bad input, :class:`QCError` when the gold gate fails,
    ``FileNotFoundError`` for missing tables, :class:`TableError` for malformed ones.
    """
    params = params or Params()
    p = params.pseudomask
    method = method or p.method
    if method not in METHODS:
        raise PseudomaskError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    points_path, out = Path(points), Path(out)
    table = read_table("manifest", manifest)
    root = Path(images) if images is not None else Path(table_metadata(table).get("root", "."))
    entries = {
        row["image_id"]: row for row in table.select(["image_id", "path", "width", "height", "split"]).to_pylist()
    }
    pts = read_table("points", points_path)
    ids = np.asarray(pts.column("image_id").to_pylist(), dtype=object)
    xy = np.stack([pts.column("x").to_numpy(), pts.column("y").to_numpy()], axis=1) if len(ids) else np.zeros((0, 2))
    order = np.argsort(ids, kind="stable")
    uniq, starts = np.unique(ids[order], return_index=True) if len(ids) else (np.zeros(0, object), np.zeros(0, int))
    rows_of = dict(zip(uniq.tolist(), np.split(order, starts[1:]), strict=True))
    unknown = [i for i in rows_of if i not in entries]
    if unknown:
        row = int(rows_of[unknown[0]][0])
        raise PseudomaskError(
            f"{points_path}: row {row}: image_id {unknown[0]} is not in the manifest {manifest} "
            f"({len(unknown)} image id(s) unknown); ingest that image or drop its points"
        )
    gold_dir = Path(gold_masks) if gold_masks is not None else None
    # gold images first, so the QC gate fails before the pool is processed
    todo = sorted(rows_of, key=lambda i: (entries[i]["split"] != "gold", entries[i]["path"]))
    options = {"nucleus_radius_px": p.nucleus_radius_px, "distance_weight": p.distance_weight,
               "dilate": p.dilate, "erode": p.erode, "seed": params.seed}
    report = PseudomaskReport(out / "index.parquet")
    index: dict[str, list] = {k: [] for k in ("image_id", "semantic_path", "instances_path", "method",
                                              "n_points", "n_instances")}
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp_dir:
        staging = Path(tmp_dir) / out.name
        gate_done = False
        for n, image_id in enumerate(todo):
            entry = entries[image_id]
            if not gate_done and entry["split"] != "gold":
                _gate(report, p.min_gold_dice, gold_dir, log)
                gate_done = True
            rows = rows_of[image_id]
            image_path = root / entry["path"]
            try:
                image = read_image(image_path)
            except (ImageError, FileNotFoundError) as exc:
                raise PseudomaskError(f"image {image_id} ({entry['path']}): {exc}") from None
            try:
                pm = from_points(image, xy[rows], method, **options)
            except PointError as exc:
                raise PseudomaskError(
                    f"{points_path}: row {int(rows[exc.index])} (image_id {image_id}, {entry['path']}): {exc}"
                ) from None
            semantic_rel, instances_rel = f"semantic/{image_id}.png", f"instances/{image_id}.tif"
            write_labels(staging / semantic_rel, pm.semantic)
            write_labels(staging / instances_rel, pm.instances)
            for key, value in (("image_id", image_id), ("semantic_path", semantic_rel),
                               ("instances_path", instances_rel), ("method", method),
                               ("n_points", pm.n_points), ("n_instances", pm.n_instances)):
                index[key].append(value)
            report.images += 1
            report.points += pm.n_points
            report.instances += pm.n_instances
            if entry["split"] == "gold" and gold_dir is not None:
                mask_path = _gold_mask(gold_dir, entry["path"])
                if mask_path is None:
                    log(f"qc: gold image {entry['path']} has no ground-truth mask under {gold_dir}; not scored")
                else:
                    try:
                        gt = read_labels(mask_path)
                    except ImageError as exc:
                        raise PseudomaskError(f"gold mask of image {image_id} ({entry['path']}): {exc}") from None
                    report.gold[image_id] = _score(gt, pm, entry["path"])
            if (n + 1) % 100 == 0:
                log(f"pseudomasks: {n + 1}/{len(todo)} images ({time.perf_counter() - started:.0f} s)")
        if not gate_done:
            _gate(report, p.min_gold_dice, gold_dir, log)
        write_table("pseudomask_index", pa.table({
            "image_id": pa.array(index["image_id"], pa.string()),
            "semantic_path": pa.array(index["semantic_path"], pa.string()),
            "instances_path": pa.array(index["instances_path"], pa.string()),
            "method": pa.array(index["method"], pa.string()),
            "n_points": pa.array(index["n_points"], pa.int32()),
            "n_instances": pa.array(index["n_instances"], pa.int32()),
        }), staging / "index.parquet", metadata={"method": method, "options": options})
        _swap_in(staging, out)
    if qc is not None:
        atomic_write_text(qc, json.dumps({
            "method": method, "min_gold_dice": p.min_gold_dice, "gold_mean_labeled_dice": report.gold_mean_dice,
            "gold": report.gold, "images": report.images, "points": report.points, "instances": report.instances,
        }, indent=1, sort_keys=True) + "\n")
    log(f"pseudomasks: {report.images} images, {report.points} points, {report.instances} instances "
        f"({method}) -> {out}")
    return report


def _score(gt: np.ndarray, pm, rel: str) -> dict[str, float]:
    if gt.shape != pm.semantic.shape:
        raise PseudomaskError(f"gold mask for {rel} has shape {gt.shape}, its image {pm.semantic.shape}")
    labeled = pm.semantic != IGNORE
    whole = segmentation_scores(gt, pm.instances)
    return {
        "path": rel,
        "labeled_dice": round(dice(gt, pm.semantic == NUCLEUS, valid=labeled), 4),
        "coverage": round(float(labeled.mean()), 4),
        "whole_dice": round(whole.dice, 4),
        "whole_aji": round(whole.aji, 4),
    }


def _gate(report: PseudomaskReport, minimum: float, gold_dir: Path | None, log: Callable[[str], None]) -> None:
    if gold_dir is None:
        log("qc: no --gold-masks given; gold gate skipped")
        return
    if not report.gold:
        log("qc: no gold image has both points and a ground-truth mask; gold gate skipped")
        return
    scores = list(report.gold.values())
    report.gold_mean_dice = round(float(np.mean([s["labeled_dice"] for s in scores])), 4)
    lines = "\n".join(
        f"  {s['path']}: labeled-pixel Dice {s['labeled_dice']:.3f}, whole-image Dice {s['whole_dice']:.3f}, "
        f"AJI {s['whole_aji']:.3f}, labeled {100 * s['coverage']:.0f}% of pixels" for s in scores
    )
    if report.gold_mean_dice < minimum:
        raise QCError(
            f"QC failed: mean labeled-pixel Dice of the pseudo-masks on {len(scores)} gold image(s) is "
            f"{report.gold_mean_dice:.3f} < pseudomask.min_gold_dice {minimum}; nothing written.\n{lines}\n"
            "Check that the points are (x = column, y = row) pixels of these images and that "
            "pseudomask.nucleus_radius_px matches the nuclei (pixels), or lower the threshold in params.yaml."
        )
    log(f"qc: gold mean labeled-pixel Dice {report.gold_mean_dice:.3f} >= {minimum} (passed)\n{lines}")


def _swap_in(staging: Path, out: Path) -> None:
    """Replace ``out`` by ``staging`` with two renames; the old tree lands in the temp folder and goes with it."""
    if out.exists():
        out.rename(staging.parent / "previous")
    staging.mkdir(parents=True, exist_ok=True)
    staging.rename(out)


def command(
    points: Path = typer.Option(Path("storage/points.parquet"), help="Points table (one row per clicked nucleus)."),
    manifest: Path = typer.Option(Path("storage/manifest.parquet"), help="Manifest table of the images."),
    out: Path = typer.Option(Path("storage/pseudomasks"), help="Folder to (re)create: masks + index.parquet."),
    params: Path = typer.Option(Path("params.yaml"), help="params file (section pseudomask, seed)."),
    method: str | None = typer.Option(None, help="voronoi | cluster | voronoi_cluster (default: params)."),
    images: Path | None = typer.Option(None, help="Image folder (default: the root the manifest was built from)."),
    gold_masks: Path | None = typer.Option(
        None, help="Ground-truth masks mirroring the image folder; enables the gold QC gate."
    ),
    qc: Path | None = typer.Option(None, help="Write the gold QC scores here (JSON)."),
) -> None:
    """Make pseudo-masks (Qu et al. Voronoi + cluster labels) from the clicked points of every annotated image."""
    try:
        run(points, manifest, out, params=load_params(params), method=method, images=images,
            gold_masks=gold_masks, qc=qc)
    except (PseudomaskError, QCError, ParamsError, TableError, FileNotFoundError) as exc:
        fail(exc)


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.pseudomasks [--points ...] [--manifest ...] [--out ...]``."""
    run_alone(command, argv)


if __name__ == "__main__":
    main()
