"""Stage ``pseudomasks``: points table + manifest -> pseudo-masks of every annotated image + an index table.

Every image with at least one row in the points table (default: the consensus points, one per nucleus)
gets, under ``out`` (default ``storage/pseudomasks``)::

    voronoi/<image_id>.png     uint8 Voronoi label (Qu et al.): 0 background, 1 nucleus, 255 ignore
    cluster/<image_id>.png     uint8 cluster label (Qu et al.); not written for pseudomask.method voronoi
    semantic/<image_id>.png    uint8 map of pseudomask.method (voronoi_cluster: the two labels combined)
    instances/<image_id>.tif   int32: i = the nucleus of the image's i-th unique point, ids above the
                               number of points = blobs nobody clicked (pseudomask.keep_unclicked)
    index.parquet              ``pseudomask_index`` table; paths relative to this folder

Qu et al. train on ``voronoi`` and ``cluster`` as two losses; ``semantic`` is one map for a single-loss
trainer and for QC. Images without points get no mask (they are not annotated). With a ``stain`` section
(H&E RGB images), the k-means sees :func:`nucleate.stain.apply_stain` of each image: normalised to the stain
reference (``stain.normalise``) and as ``stain.cluster_input``; gray images are never changed. Every point row counts
as one nucleus whatever its ``label`` / ``origin``; points in the same pixel collapse. Images are read
from the manifest's root folder (``images`` overrides it), one at a time; a whole-slide tile is read from its
slide (:func:`nucleate.slides.read_pool_image`; its points are in tile px).

QC gate: gold images (manifest split ``gold``) that have points and a ground-truth instance mask under
``gold_masks`` (same relative path as the image, ``.tif``/``.png``; plain images only: tiles have no gold
masks) are done first and scored on the
``semantic`` map / ``instances``: pixel Dice on the labeled (non-ignore) pixels (how right the supervision
is), the labeled fraction of the image (how much it supervises), whole-image Dice and AJI (how much of
every nucleus it recovers). The stage fails, names every gold image with the failing measures and writes
nothing when a mean over the gold images falls below its floor: ``pseudomask.min_gold_dice`` (labeled
Dice), ``min_gold_labeled_fraction`` or ``min_gold_whole_dice``. The scores go to ``qc`` (JSON).

An annotated image that cannot be read is reported (a ``failed ...`` log line, ``failed`` in the index
metadata and the QC file) and gets no mask; the others are done (``--strict``: the stage fails instead).
The output folder is built beside ``out`` and swapped in whole (:func:`nucleate.io.atomic.atomic_dir`),
so a failure (bad point, QC, ``--strict``) never leaves a half-written set of masks.

Each image's masks are made by :func:`mask_image` (top-level, picklable: it writes that image's maps into
the staging folder and returns its index row), in this process or, with ``NUCLEATE_DASK`` set, on a Dask
cluster (:mod:`tasks._map`); the outputs are the same byte for byte.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import typer

from nucleate.annotations import points_xy, rows_by_image
from nucleate.config import PseudomaskParams, StainParams
from nucleate.io import (
    LAYOUT,
    ImageError,
    MissingInput,
    atomic_dir,
    atomic_write_text,
    content_id,
    find_labels,
    read_labels,
    read_table,
    table_metadata,
    write_labels,
    write_table,
)
from nucleate.metrics import dice, segmentation_scores
from nucleate.pseudomask import IGNORE, NUCLEUS, PointError, PseudoMask, from_points
from nucleate.slides import PoolRows, SlideError, is_tile_row, read_pool_image
from nucleate.stain import StainTransform
from tasks._map import SEQUENTIAL, Mapper, open_mapper, per_image_failure
from tasks._stage import Report, StageError, load_params_or_exit, logger, run_alone, stage_errors

__all__ = ["GATES", "MaskItem", "MaskSpec", "PseudomaskError", "PseudomaskReport", "QCError", "command", "main",
           "mask_image", "run"]

#: errors of one image that leave it out (reported) instead of failing the stage: it cannot be read
PER_IMAGE_ERRORS: tuple[type[BaseException], ...] = (ImageError, SlideError, OSError)

#: QC measure (mean over gold images) -> (params field holding its floor, words for people)
GATES: dict[str, tuple[str, str]] = {
    "labeled_dice": ("min_gold_dice", "labeled-pixel Dice"),
    "coverage": ("min_gold_labeled_fraction", "labeled fraction"),
    "whole_dice": ("min_gold_whole_dice", "whole-image Dice"),
}


class PseudomaskError(StageError):
    """Bad input: a point outside its image, an image missing from the manifest or unreadable."""


class QCError(StageError):
    """Gold-image pseudo-masks scored below a ``pseudomask.min_gold_*`` floor; nothing was written."""


@dataclass
class PseudomaskReport(Report):
    """What one run did. ``gold`` maps image_id -> scores of each gold image checked, ``gold_mean`` the means."""

    index: Path
    method: str
    images: int = 0
    points: int = 0
    instances: int = 0
    unclicked: int = 0
    qc: str = "not run"
    gold: dict[str, dict[str, float | str]] = field(default_factory=dict)
    gold_mean: dict[str, float] = field(default_factory=dict)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (image_id, path, reason)

    def lines(self) -> list[str]:
        """A summary line and the gold QC outcome."""
        extra = f" ({self.unclicked} unclicked blobs kept)" if self.unclicked else ""
        extra += f", {len(self.failed)} failed" if self.failed else ""
        return [f"pseudomasks: {self.images} images, {self.points} points, {self.instances} instances{extra} "
                f"({self.method}) -> {self.index.parent}", f"qc: {self.qc}"]


def run(
    pseudomask: PseudomaskParams,
    seed: int,
    *,
    points: str | Path,
    manifest: str | Path,
    out: str | Path,
    images: str | Path | None = None,
    gold_masks: str | Path | None = None,
    qc: str | Path | None = None,
    strict: bool = False,
    mapper: Mapper | None = None,
    stain: StainParams | None = None,
    log: logging.Logger | None = None,
) -> PseudomaskReport:
    """Write the pseudo-masks of every annotated image and the index under ``out``; see the module docstring.

    ``pseudomask`` and ``seed`` are the params.yaml values (``params.pseudomask``, ``params.seed``); ``stain``
    is ``params.stain`` (None: images as read, what the default section does too).
    An image that cannot be read is reported (log line, ``report.failed``, the index's and QC file's
    ``failed``) and left out; the others are done (``strict``: fail instead, writing nothing). ``mapper``:
    where the per-image work runs (:mod:`tasks._map`; None: ``NUCLEATE_DASK``, else here; same outputs).
    Raises :class:`MissingInput` for a missing points table, manifest or gold-mask folder,
    :class:`PseudomaskError` for bad input, :class:`QCError` when the gold gate fails,
    :class:`nucleate.io.TableError` for a malformed table.
    """
    log = log or logger("pseudomasks")
    transform = None if stain is None else StainTransform.from_params(stain)  # a bad reference fails first
    points_path = LAYOUT.require("consensus", points)
    manifest_path = LAYOUT.require("manifest", manifest)
    out = Path(out)
    gold_dir = Path(gold_masks) if gold_masks is not None else None
    if gold_dir is not None and not gold_dir.is_dir():
        raise MissingInput(f"{gold_dir}: gold masks folder not found; pass --gold-masks a folder of ground-truth "
                           "instance masks mirroring the image folder (the sample's come from `nucleate sample-data`)")
    table = read_table("manifest", manifest_path)
    root = Path(images) if images is not None else Path(table_metadata(table).get("root", "."))
    entries = PoolRows(table, ["split"])  # image_id -> manifest row (tile columns too), built when asked for
    pts = read_table("points", points_path)
    xy = points_xy(pts)
    rows_of = rows_by_image(pts)  # rows of one image keep their table order: instance i = the i-th point
    unknown = [i for i in rows_of if i not in entries]
    if unknown:
        row = int(rows_of[unknown[0]][0])
        raise PseudomaskError(
            f"{points_path}: row {row}: image_id {unknown[0]} is not in the manifest {manifest_path} "
            f"({len(unknown)} image id(s) unknown); ingest that image or drop its points"
        )
    # gold images first, so the QC gate fails before the pool is processed
    todo = sorted(rows_of, key=lambda i: (entries[i]["split"] != "gold", entries[i]["path"]))
    report = PseudomaskReport(out / "index.parquet", pseudomask.method)
    started = time.perf_counter()
    with open_mapper(mapper) as where, atomic_dir(out) as staging:
        if where is not SEQUENTIAL:
            log.info(f"pseudomasks: {len(todo)} images on {where.name}")
        spec = MaskSpec(pseudomask, seed, str(root), str(staging), None if gold_dir is None else str(gold_dir),
                        str(points_path), transform)
        items = [(image_id, MaskItem(image_id, entries[image_id]["path"], entries[image_id]["split"] == "gold",
                                     xy[rows_of[image_id]], np.asarray(rows_of[image_id], np.int64),
                                     entries[image_id]))
                 for image_id in todo]
        n_gold = sum(1 for _, item in items if item.gold)
        done: dict[int, dict] = {}
        for phase, offset in ((items[:n_gold], 0), (items[n_gold:], n_gold)):
            if offset:  # the gold images are done: gate before the pool
                _gate(report, pseudomask, gold_dir, log)
            for outcome in where.map(functools.partial(mask_image, spec), phase):
                index = offset + outcome.index
                reason = per_image_failure(outcome, PER_IMAGE_ERRORS)
                if reason is not None:
                    report.failed.append((outcome.key, entries[outcome.key]["path"], reason))
                    log.warning(f"failed {entries[outcome.key]['path']} ({outcome.key}): {reason}")
                else:
                    done[index] = outcome.value
                    if outcome.value.get("note"):
                        log.info(outcome.value["note"])
                finished = len(done) + len(report.failed)
                if finished % 100 == 0:
                    log.info(f"pseudomasks: {finished}/{len(todo)} images ({time.perf_counter() - started:.0f} s)")
            if not offset:  # gold scores in the images' order, whatever order the workers finished in
                report.gold = {items[k][0]: done[k]["gold"] for k in sorted(done) if done[k]["gold"] is not None}
        if not n_gold:
            _gate(report, pseudomask, gold_dir, log)
        position = {image_id: k for k, image_id in enumerate(todo)}
        report.failed.sort(key=lambda f: position[f[0]])
        if report.failed and strict:
            raise PseudomaskError(f"--strict: {len(report.failed)} image(s) could not be read (first: "
                                  f"{report.failed[0][1]}: {report.failed[0][2]}); nothing written")
        if items and not done:
            raise PseudomaskError(f"none of the {len(items)} annotated images could be read (see the lines "
                                  "above); nothing written")
        rows = [done[k] for k in sorted(done)]
        for row in rows:
            report.images += 1
            report.points += row["n_points"]
            report.instances += row["n_instances"]
            report.unclicked += row["n_unclicked"]
        write_table("pseudomask_index", pa.table({
            "image_id": pa.array([r["image_id"] for r in rows], pa.string()),
            "semantic_path": pa.array([r["semantic_path"] for r in rows], pa.string()),
            "instances_path": pa.array([r["instances_path"] for r in rows], pa.string()),
            "voronoi_path": pa.array([r["voronoi_path"] for r in rows], pa.string()),
            "cluster_path": pa.array([r["cluster_path"] for r in rows], pa.string()),
            "method": pa.array([r["method"] for r in rows], pa.string()),
            "n_points": pa.array([r["n_points"] for r in rows], pa.int32()),
            "n_instances": pa.array([r["n_instances"] for r in rows], pa.int32()),
        }), staging / "index.parquet", metadata={"method": pseudomask.method, "seed": seed,
                                                  "points_id": content_id(points_path),
                                                  "params": dataclasses.asdict(pseudomask),
                                                  **({"failed": _failed_json(report.failed)} if report.failed else {})})
    if qc is not None:
        atomic_write_text(qc, json.dumps({
            "method": pseudomask.method,
            "floors": {f: getattr(pseudomask, f) for f, _ in GATES.values()},
            "gold_mean": report.gold_mean,
            "gold_mean_labeled_dice": report.gold_mean.get("labeled_dice"),
            "gold": report.gold, "images": report.images, "points": report.points, "instances": report.instances,
            "unclicked": report.unclicked, "failed": _failed_json(report.failed),
        }, indent=1, sort_keys=True) + "\n")
    return report


@dataclass(frozen=True)
class MaskSpec:
    """What every image's work shares: the params, the folders (as strings: a worker may be another machine
    that mounts them at the same paths) and the points table's path (for messages)."""

    pseudomask: PseudomaskParams
    seed: int
    root: str
    staging: str
    gold_dir: str | None
    points_path: str
    stain: StainTransform | None = None  # None: images as read (the default stain section does the same)


@dataclass(frozen=True)
class MaskItem:
    """One annotated image: its id, path under the image folder, gold or not, its points (n, 2) float64 px
    (x, y), their rows in the points table and its manifest row (``entry``: a tile's columns say where it lies
    in its slide, ``path``)."""

    image_id: str
    path: str
    gold: bool
    xy: np.ndarray
    rows: np.ndarray
    entry: dict


def mask_image(spec: MaskSpec, item: MaskItem) -> dict:
    """Pseudo-masks of one image, written below ``spec.staging``; its index row (``cluster_path`` None when
    absent), ``n_unclicked``, ``gold`` (its QC scores, or None) and ``note`` (a line to log, or None).

    Raises :class:`nucleate.io.ImageError` / :class:`nucleate.slides.SlideError` / ``OSError`` for an image
    that cannot be read (a per-image failure), :class:`PseudomaskError` for a bad point or gold mask (an input
    the user must fix)."""
    image = read_pool_image(spec.root, item.entry)
    if spec.stain is not None:
        image = spec.stain.cluster(image)
    try:
        pm = from_points(image, item.xy, params=spec.pseudomask, seed=spec.seed)
    except PointError as exc:
        raise PseudomaskError(
            f"{spec.points_path}: row {int(item.rows[exc.index])} (image_id {item.image_id}, {item.path}): {exc}"
        ) from None
    row = {"image_id": item.image_id, **_write_maps(Path(spec.staging), item.image_id, pm), "method": pm.method,
           "n_points": pm.n_points, "n_instances": pm.n_instances, "n_unclicked": pm.n_unclicked,
           "gold": None, "note": None}
    if item.gold and spec.gold_dir is not None and not is_tile_row(item.entry):  # tiles have no gold masks
        mask_path = find_labels(Path(spec.gold_dir), item.path)
        if mask_path is None:
            row["note"] = f"qc: gold image {item.path} has no ground-truth mask under {spec.gold_dir}; not scored"
        else:
            try:
                gt = read_labels(mask_path)
            except ImageError as exc:
                raise PseudomaskError(f"gold mask of image {item.image_id} ({item.path}): {exc}") from None
            row["gold"] = _score(gt, pm, item.path)
    return row


def _failed_json(failed: list[tuple[str, str, str]]) -> list[dict[str, str]]:
    return [{"image_id": i, "path": p, "reason": r} for i, p, r in failed]


def _write_maps(staging: Path, image_id: str, pm: PseudoMask) -> dict[str, str | None]:
    """Write one image's maps below ``staging``; their paths relative to it (``cluster_path`` None if absent)."""
    paths: dict[str, str | None] = {
        "semantic_path": f"semantic/{image_id}.png",
        "instances_path": f"instances/{image_id}.tif",
        "voronoi_path": f"voronoi/{image_id}.png",
        "cluster_path": None if pm.cluster is None else f"cluster/{image_id}.png",
    }
    for key, array in (("semantic_path", pm.semantic), ("instances_path", pm.instances),
                       ("voronoi_path", pm.voronoi), ("cluster_path", pm.cluster)):
        if paths[key] is not None:
            write_labels(staging / paths[key], array)
    return paths


def _score(gt: np.ndarray, pm: PseudoMask, rel: str) -> dict[str, float | str]:
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


def _gate(report: PseudomaskReport, p: PseudomaskParams, gold_dir: Path | None, log: logging.Logger) -> None:
    """Score the gold images done so far against the floors in ``p``; :class:`QCError` names what failed."""
    if gold_dir is None:
        report.qc = "skipped (no --gold-masks given)"
        return
    if not report.gold:
        report.qc = "skipped (no gold image has both points and a ground-truth mask)"
        return
    scores = list(report.gold.values())
    report.gold_mean = {key: round(float(np.mean([s[key] for s in scores])), 4)
                        for key in ("labeled_dice", "coverage", "whole_dice", "whole_aji")}
    failed = {key: getattr(p, floor) for key, (floor, _) in GATES.items()
              if report.gold_mean[key] < getattr(p, floor)}
    if not failed:
        report.qc = f"passed on {len(scores)} gold image(s): " + ", ".join(
            f"mean {words} {report.gold_mean[key]:.3f} >= {getattr(p, floor)}" for key, (floor, words) in GATES.items()
        ) + f"; AJI {report.gold_mean['whole_aji']:.3f}"
        for s in scores:
            log.info(f"qc: {s['path']}: " + ", ".join(f"{words} {s[key]:.3f}" for key, (_, words) in GATES.items())
                     + f", AJI {s['whole_aji']:.3f}")
        return
    means = "; ".join(f"mean {GATES[k][1]} {report.gold_mean[k]:.3f} < pseudomask.{GATES[k][0]} {floor}"
                      for k, floor in failed.items())
    per_image = "\n".join(
        f"  {s['path']}: " + ", ".join(
            f"{words} {s[key]:.3f}" + (" (below the floor)" if s[key] < getattr(p, floor) else "")
            for key, (floor, words) in GATES.items() if key in failed
        ) for s in scores
    )
    raise QCError(
        f"QC failed on {len(scores)} gold image(s): {means}; nothing written.\n{per_image}\n"
        "Check that the points are (x = column, y = row) pixels of these images, that pseudomask.method labels "
        "enough of each image (voronoi alone labels ~4 %) and that pseudomask.nucleus_radius_px matches the "
        "nuclei (pixels); or change the floors in params.yaml."
    )


def command(
    points: Path = typer.Option(LAYOUT.consensus, help="Points table: one row per nucleus (the consensus points)."),
    manifest: Path = typer.Option(LAYOUT.manifest, help="Manifest table of the images."),
    out: Path = typer.Option(LAYOUT.pseudomasks, help="Folder to (re)create: the maps + index.parquet."),
    params: Path = typer.Option(Path("params.yaml"), help="params file (sections pseudomask, stain; seed)."),
    images: Path | None = typer.Option(None, help="Image folder (default: the root the manifest was built from)."),
    gold_masks: Path | None = typer.Option(
        None, help="Ground-truth masks mirroring the image folder; enables the gold QC gate."
    ),
    qc: Path = typer.Option(LAYOUT.pseudomask_qc, help="Write the counts and gold QC scores here (JSON)."),
    strict: bool = typer.Option(False, help="Fail (write nothing) if any annotated image cannot be read."),
) -> None:
    """Make pseudo-masks (Qu et al. Voronoi + cluster labels) from the clicked points of every annotated image."""
    cfg = load_params_or_exit(params)
    with stage_errors():
        report = run(cfg.pseudomask, cfg.seed, points=points, manifest=manifest, out=out, images=images,
                     gold_masks=gold_masks, qc=qc, strict=strict, stain=cfg.stain)
    for line in report.lines():
        typer.echo(line)


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.pseudomasks [--points ...] [--manifest ...] [--out ...]``."""
    run_alone(command, argv)


if __name__ == "__main__":
    main()
