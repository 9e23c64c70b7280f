"""Stage ``train``: annotated pool images -> the student (``storage/model``) and its image-level tables.

Training images are the manifest's ``pool`` images that have rows in ``points`` (``train.supervision``
qu2019 / donuseg; default: the consensus points), or a ground-truth mask under ``masks`` (``full``; the
heat-map target then uses the masks' centroids). Gold and test images never train: gold is for tuning
and the QC / validation Dice, test for reporting. The pseudo-masks come from ``pseudomasks`` when its
index was made from this very points table (``points_id`` in its metadata); otherwise (e.g.
``--points storage/sample/points.parquet``, the sample's ground-truth centres) they are made in memory
with the same :func:`nucleate.pseudomask.from_points` and params.

H&E (``stain`` section): every image is seen through :class:`nucleate.stain.StainTransform` - the pseudo-masks
made in memory through ``stain.cluster_input``, the student (training, gold validation, KD crops, student
tables) through ``stain.student_input``, both after ``stain.normalise``; a non-default student side is recorded
in the model's ``extra["stain"]`` (reference numbers included), so ``predict`` transforms images the same way.
Gray images pass unchanged, and the default section changes nothing.

Writes, each atomically:

* ``out`` (``storage/model``): ``student.pt`` + ``student.json`` (:func:`nucleate.models.save_model`;
  ``extra`` = what inference needs: classes, the nucleus scale, whether the heat-map was trained),
  ``model_card.json`` (round, supervision, images, clicks, the nucleus scale it works at and the data's,
  params, content ids of the data it saw, training-time gold Dice, torch version, device, the number of
  processes that trained it, seconds) and ``training.csv`` (one row per epoch: loss terms, learning
  rate, crops/s, data-loading and step seconds, gold Dice; DVC plots);
* ``student_probs`` / ``student_features``: the image head's probabilities and the pooled embedding of
  every pool image (``select.space: student``, coreset / badge);
* ``checkpoints/train.pt`` after every epoch; ``--resume`` continues a killed run from it.

Several processes (one per GPU, or CPU processes): run under ``torchrun`` (``torchrun --nproc-per-node N
-m tasks.train ...``) or ask for ``--nproc N``, which starts torchrun on this machine. Each process reads
torchrun's ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``, joins the process group (NCCL on ``cuda:LOCAL_RANK``,
gloo on the CPU) and trains its equal share of every global batch of ``train.batch_size`` crops
(:mod:`nucleate.training.distributed`); rank 0 alone writes the checkpoint, the model folder, the model card
and the student tables. ``--resume`` loads rank 0's checkpoint on every rank.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist
import typer

import nucleate
from nucleate.annotations import centroids_xy, points_xy, rows_by_image
from nucleate.config import DonusegParams, ModelParams, PredictParams, PseudomaskParams, StainParams, TrainParams
from nucleate.device import DeviceError, resolve_device
from nucleate.inference import predict_maps
from nucleate.io import (
    LAYOUT,
    ImageError,
    MissingInput,
    atomic_dir,
    atomic_write_text,
    content_id,
    find_labels,
    probs_array,
    probs_table,
    read_labels,
    read_table,
    table_metadata,
    write_table,
)
from nucleate.models import ModelError, network_input, resize_labels, save_model
from nucleate.pseudomask import PointError, from_points
from nucleate.slides import PoolRows, SlideError, is_tile_row, read_pool_image
from nucleate.stain import StainTransform
from nucleate.training import (
    TrainError,
    UnlabeledPool,
    heatmap_trained,
    params_dict,
    prepare_image,
    train,
)
from nucleate.training.distributed import Ranks, barrier, ranks
from tasks._stage import Report, StageError, load_params_or_exit, logger, run_alone, stage_errors

__all__ = ["CHECKPOINT_FILE", "TrainReport", "TrainStageError", "command", "launch", "main", "run"]

#: the checkpoint's file name inside the checkpoints folder
CHECKPOINT_FILE = "train.pt"


class TrainStageError(StageError):
    """Bad or missing training input (no annotated pool image, a mask of the wrong shape, ...)."""


@dataclass
class TrainReport(Report):
    """What one training run did."""

    model: Path
    supervision: str
    images: int = 0
    points: int = 0
    epochs: int = 0
    steps: int = 0
    seconds: float = 0.0
    device: str = "cpu"
    final_loss: float | None = None
    gold_dice: float | None = None
    resumed_from: int | None = None
    student_rows: int = 0
    processes: int = 1  # torchrun's WORLD_SIZE
    rank: int = 0  # this process's; only rank 0 writes (and prints)
    history: list[dict[str, float]] = field(default_factory=list)

    def lines(self) -> list[str]:
        gold = "" if self.gold_dice is None else f", gold Dice {self.gold_dice:.3f}"
        resumed = "" if self.resumed_from is None else f" (resumed after epoch {self.resumed_from})"
        where = self.device if self.processes == 1 else f"{self.processes} processes ({self.device} on rank 0)"
        return [f"train: {self.supervision} on {self.images} images / {self.points} points, {self.epochs} epochs "
                f"({self.steps} steps) on {where} in {self.seconds:.0f} s{resumed}: final loss "
                f"{self.final_loss:.4f}{gold} -> {self.model}",
                f"student tables: {self.student_rows} images (student_probs, student_features)"]


def _file_id(path: Path | None) -> str | None:
    return content_id(path) if path is not None and path.is_file() else None


def _pool_entries(manifest: pa.Table) -> tuple[Mapping[str, dict[str, Any]], Path]:
    root = Path(table_metadata(manifest).get("root", "."))
    return PoolRows(manifest, ["split"]), root  # rows built when asked for; a tile's say where it lies


def _read(root: Path, entry: dict[str, Any], view: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """The image of a manifest entry, through ``view`` (a :class:`nucleate.stain.StainTransform` method)."""
    try:
        image = read_pool_image(root, entry)
    except (ImageError, SlideError, FileNotFoundError) as exc:
        raise TrainStageError(f"image {entry['image_id']} ({entry['path']}): {exc}") from None
    return image if view is None else view(image)


def _student_pool_image(root: Path, stain: StainTransform, row: Mapping[str, Any]) -> np.ndarray:
    """A pool item's pixels (:func:`nucleate.slides.read_pool_image`) as the student sees them (KD crops)."""
    return stain.student(read_pool_image(root, row))


def _mask(masks: Path, entry: dict[str, Any]) -> np.ndarray | None:
    """The ground-truth mask of a plain image under ``masks`` (None without one; tiles have none)."""
    path = None if is_tile_row(entry) else find_labels(masks, entry["path"])
    if path is None:
        return None
    try:
        return read_labels(path)
    except ImageError as exc:
        raise TrainStageError(f"mask of image {entry['image_id']} ({entry['path']}): {exc}") from None


def _stored_pseudomasks(folder: Path | None, points_id: str, log: logging.Logger) -> dict[str, dict[str, str]] | None:
    """image_id -> paths of its maps, when ``folder`` holds pseudo-masks of exactly this points table."""
    index_path = None if folder is None else folder / "index.parquet"
    if index_path is None or not index_path.is_file():
        log.info(f"train: no pseudo-masks at {folder}; making them in memory from the points")
        return None
    index = read_table("pseudomask_index", index_path)
    if table_metadata(index).get("points_id") != points_id:
        log.info(f"train: the pseudo-masks in {folder} were made from other points; making them in memory")
        return None
    return {r["image_id"]: r for r in index.to_pylist()}


def _training_images(model: ModelParams, train_p: TrainParams, pseudomask: PseudomaskParams, seed: int, *,
                     stain: StainTransform, entries: Mapping[str, dict[str, Any]], root: Path,
                     points_path: Path | None,
                     points: pa.Table | None, points_id: str | None,
                     pseudomasks: Path | None, masks: Path | None, teacher: dict[str, np.ndarray],
                     log: logging.Logger) -> list:
    scale = model.nucleus_radius_px / pseudomask.nucleus_radius_px
    sigma = train_p.heatmap_sigma * model.nucleus_radius_px
    images = []
    if train_p.supervision == "full":
        if masks is None:
            raise TrainStageError("train.supervision full needs ground-truth masks: pass --masks FOLDER (instance "
                                  "masks mirroring the image folder)")
        for image_id, entry in sorted(entries.items(), key=lambda kv: kv[1]["path"]):
            if entry["split"] != "pool":
                continue
            truth = _mask(masks, entry)
            if truth is None:
                continue
            _, xy = centroids_xy(truth)
            images.append(prepare_image(image_id, _read(root, entry, stain.student), scale=scale,
                                        patch_px=train_p.patch_px,
                                        points_xy=xy, heatmap_sigma_px=sigma, truth=truth,
                                        teacher_probs=teacher.get(image_id)))
        if not images:
            raise TrainStageError(f"no pool image has a ground-truth mask under {masks}; masks mirror the image "
                                  "folder's relative paths (.tif / .png)")
        return images
    assert points is not None and points_path is not None
    xy_all = points_xy(points)
    rows_of = rows_by_image(points)
    unknown = [i for i in rows_of if i not in entries]
    if unknown:
        raise TrainStageError(f"{points_path}: row {int(rows_of[unknown[0]][0])}: image_id {unknown[0]} is not in "
                              f"the manifest ({len(unknown)} unknown image ids); ingest the image or drop its points")
    held_out = sorted({entries[i]["split"] for i in rows_of if entries[i]["split"] != "pool"})
    if held_out:
        log.info(f"train: points on {', '.join(held_out)} images are not trained on (tuning / reporting splits)")
    stored = _stored_pseudomasks(pseudomasks, points_id, log)
    for image_id in sorted((i for i in rows_of if entries[i]["split"] == "pool"), key=lambda i: entries[i]["path"]):
        entry = entries[image_id]
        image = _read(root, entry)
        xy = xy_all[rows_of[image_id]]
        if stored is not None:
            if image_id not in stored:
                raise TrainStageError(f"image {image_id} ({entry['path']}) has points but no pseudo-mask in "
                                      f"{pseudomasks}; run `nucleate pseudomasks`")
            row = stored[image_id]
            maps = {name: None if row[f"{name}_path"] is None else read_labels(pseudomasks / row[f"{name}_path"])
                    for name in ("voronoi", "cluster", "semantic")}
        else:
            try:
                pm = from_points(stain.cluster(image), xy, params=pseudomask, seed=seed)
            except PointError as exc:
                raise TrainStageError(f"{points_path}: row {int(rows_of[image_id][exc.index])} (image {image_id}, "
                                      f"{entry['path']}): {exc}") from None
            maps = {"voronoi": pm.voronoi, "cluster": pm.cluster, "semantic": pm.semantic}
        images.append(prepare_image(image_id, stain.student(image), scale=scale, patch_px=train_p.patch_px,
                                    points_xy=xy, heatmap_sigma_px=sigma, teacher_probs=teacher.get(image_id), **maps))
    if not images:
        raise TrainStageError(f"{points_path}: no pool image has points yet; annotate a round first "
                              "(`nucleate ls push`, then `nucleate ls pull` and `nucleate points`)")
    return images


def _gold(entries: Mapping[str, dict[str, Any]], root: Path, masks: Path | None, scale: float, stain: StainTransform
          ) -> list[tuple[np.ndarray, np.ndarray]]:
    if masks is None:
        return []
    gold = []
    for entry in sorted((e for e in entries.values() if e["split"] == "gold"), key=lambda e: e["path"]):
        truth = _mask(masks, entry)
        if truth is not None:
            x = network_input(_read(root, entry, stain.student), scale)
            gold.append((x, resize_labels(truth, x.shape[1:]) > 0))
    return gold


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    columns = ["epoch", "loss", "seg", "pseudo", "con", "det", "kd", "lr", "gold_dice", "crops_per_s", "seconds",
               "data_s", "step_s"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in columns})
    atomic_write_text(path, buffer.getvalue())


def run(
    model: ModelParams,
    train_params: TrainParams,
    donuseg: DonusegParams,
    pseudomask: PseudomaskParams,
    predict: PredictParams,
    classes: tuple[str, ...],
    seed: int,
    *,
    manifest: str | Path,
    stain: StainParams | None = None,
    out: str | Path,
    points: str | Path | None = None,
    pseudomasks: str | Path | None = None,
    masks: str | Path | None = None,
    teacher_probs: str | Path | None = None,
    student_probs: str | Path | None = None,
    student_features: str | Path | None = None,
    checkpoints: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    log: logging.Logger | None = None,
) -> TrainReport:
    """Train the student and write the model folder and student tables (module docstring).

    The params sections are params.yaml's ``model``, ``train``, ``donuseg``, ``pseudomask`` (the data's
    nucleus radius and, when made in memory, the pseudo-masks), ``predict`` (the sliding window of the
    student tables), ``teacher.classes``, ``seed`` and ``stain`` (None: images as read, as the default section).
    Raises :class:`MissingInput`, :class:`TrainStageError`, :class:`nucleate.training.TrainError`.

    Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) every process calls this with the same
    arguments; it joins the process group (and leaves it on return), trains its share, and only rank 0
    writes; the other ranks return a report of the same training with ``rank`` set and nothing written.
    """
    with _process_group(train_params) as where:
        return _run(model, train_params, donuseg, pseudomask, predict, classes, seed, where, manifest=manifest,
                    out=out, points=points, pseudomasks=pseudomasks, masks=masks, teacher_probs=teacher_probs,
                    student_probs=student_probs, student_features=student_features, checkpoints=checkpoints,
                    resume=resume, progress=progress, stain=stain, log=log)


def _torchrun_env() -> tuple[int, int, int] | None:
    """(world size, rank, local rank) from torchrun's environment; None for a single process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        return world, int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError):
        raise TrainStageError("WORLD_SIZE is set but RANK / LOCAL_RANK are missing or not integers: start "
                              "several processes with torchrun (or `nucleate train --nproc N`)") from None


@contextmanager
def _process_group(train_params: TrainParams) -> Iterator[Ranks]:
    """Join torchrun's process group (NCCL on cuda:LOCAL_RANK, else gloo) for the block; leave it after."""
    found = _torchrun_env()
    if found is None or ranks().distributed:  # one process, or the caller already joined the group
        yield ranks()
        return
    world, rank, local_rank = found
    device = resolve_device(train_params.device, setting="train.device")
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DeviceError(f"LOCAL_RANK {local_rank} but torch sees {torch.cuda.device_count()} CUDA device(s) on "
                              f"this node: start at most that many processes per node (torchrun --nproc-per-node)")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=timedelta(minutes=30),
                                device_id=torch.device("cuda", local_rank) if backend == "nccl" else None)
    except (RuntimeError, ValueError) as exc:
        raise TrainStageError(f"cannot join the process group of {world} processes (rank {rank}, {backend} at "
                              f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}): "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    try:
        yield ranks()
    finally:
        dist.destroy_process_group()


def _run(model, train_params, donuseg, pseudomask, predict, classes, seed, where: Ranks, *, manifest, out, points,
         pseudomasks, masks, teacher_probs, student_probs, student_features, checkpoints, resume, progress, stain,
         log) -> TrainReport:
    log = log or logger("train")
    if not where.main:  # one log for the run: rank 0's (the others still say what goes wrong)
        log = logging.getLogger(f"{log.name}.rank{where.rank}")
        log.setLevel(logging.WARNING)
    manifest_path = LAYOUT.require("manifest", manifest)
    transform = StainTransform.from_params(stain if stain is not None else StainParams())
    points_path = LAYOUT.require("consensus", points) if train_params.supervision != "full" else None
    points_rows = read_table("points", points_path) if points_path is not None else None
    points_id = _file_id(points_path)
    masks_dir = Path(masks) if masks is not None else None
    if masks_dir is not None and not masks_dir.is_dir():
        raise MissingInput(f"{masks_dir}: masks folder not found; pass --masks a folder of ground-truth instance "
                           "masks mirroring the image folder (the sample's: storage/sample/masks)")
    entries, root = _pool_entries(read_table("manifest", manifest_path))
    teacher_path = Path(teacher_probs) if teacher_probs is not None else None
    teacher: dict[str, np.ndarray] = {}
    num_classes = len(classes)
    if teacher_path is not None and teacher_path.is_file():
        table = read_table("teacher_probs", teacher_path)
        found = list(table_metadata(table).get("classes", []))
        if found != list(classes):
            raise TrainStageError(f"{teacher_path}: teacher classes {found} differ from params teacher.classes "
                                  f"{list(classes)}; run `nucleate teacher` again")
        teacher = dict(zip(table.column("image_id").to_pylist(), probs_array(table), strict=True))
    elif train_params.kd_weight > 0:
        log.info(f"train: no teacher probabilities at {teacher_path}; the image head is not distilled (KD off)")
    images = _training_images(model, train_params, pseudomask, seed, stain=transform, entries=entries, root=root,
                              points_path=points_path, points=points_rows, points_id=points_id,
                              pseudomasks=Path(pseudomasks) if pseudomasks else None,
                              masks=masks_dir, teacher=teacher, log=log)
    scale = model.nucleus_radius_px / pseudomask.nucleus_radius_px
    if not teacher:
        train_params = dataclasses.replace(train_params, kd_weight=0.0)
    kd_pool = None
    pool_ids = [i for i, e in entries.items() if e["split"] == "pool" and i in teacher]
    if teacher and pool_ids:
        kd_pool = UnlabeledPool([entries[i] for i in pool_ids], np.stack([teacher[i] for i in pool_ids]),
                                scale=scale, patch_px=train_params.patch_px,  # manifest rows: tiles too
                                reader=functools.partial(_student_pool_image, root, transform))
    data_ids = {
        "manifest": content_id(manifest_path),
        "points": points_id,
        "pseudomasks": _file_id(Path(pseudomasks) / "index.parquet") if pseudomasks else None,
        "teacher_probs": _file_id(teacher_path),
        "images": sorted(im.image_id for im in images),
    }
    settings = {**params_dict(model, train_params, donuseg), "nucleus_radius_px": pseudomask.nucleus_radius_px,
                "classes": list(classes), "seed": seed}
    if transform.params != StainParams():  # only when set: default runs keep their fingerprints and model cards
        settings["stain"] = dataclasses.asdict(transform.params)
    fingerprint = content_hash_json({"settings": settings, "data": data_ids})
    checkpoint = (Path(checkpoints) if checkpoints is not None else LAYOUT.checkpoints) / CHECKPOINT_FILE
    if train_params.threads:
        torch.set_num_threads(train_params.threads)
    gold = _gold(entries, root, masks_dir, scale, transform) if train_params.val_every else []
    log.info(f"train: {train_params.supervision} on {len(images)} pool images ({sum(im.points for im in images)} "
             f"points), scale x{scale:.3g}, {train_params.epochs} epochs, {len(gold)} gold images for validation")
    result = train(images, model=model, train=train_params, donuseg=donuseg, seed=seed, num_classes=num_classes,
                   fingerprint=fingerprint, checkpoint=checkpoint, resume=resume, kd_pool=kd_pool, gold=gold,
                   log=log, progress=progress)
    round_no = _round(points_rows)
    extra = {
        "classes": list(classes), "nucleus_radius_px": model.nucleus_radius_px,
        "data_nucleus_radius_px": pseudomask.nucleus_radius_px,
        "heatmap_trained": heatmap_trained(train_params, donuseg), "supervision": train_params.supervision,
        "round": round_no,
    }
    if transform.to_extra() is not None:  # absent by default: models without stain settings stay as before
        extra["stain"] = transform.to_extra()
    report = TrainReport(Path(out), train_params.supervision, images=len(images),
                         points=int(sum(im.points for im in images)), epochs=train_params.epochs, steps=result.steps,
                         seconds=round(result.seconds, 1), device=result.device,
                         final_loss=result.history[-1]["loss"], resumed_from=result.resumed_from,
                         processes=where.world_size, rank=where.rank, history=result.history)
    golds = [row["gold_dice"] for row in result.history if "gold_dice" in row]
    report.gold_dice = golds[-1] if golds else None
    card = {
        "round": round_no, "supervision": train_params.supervision, "images": report.images,
        "points": report.points if train_params.supervision != "full" else 0,
        "nucleus_radius_px": model.nucleus_radius_px, "data_nucleus_radius_px": pseudomask.nucleus_radius_px,
        "params": settings, "data": data_ids,
        "metrics": {"gold_pixel_dice": report.gold_dice, "final_loss": report.final_loss},
        "donuseg_last_refresh": result.donuseg,
        "epochs": train_params.epochs, "steps": result.steps, "seconds": report.seconds, "device": result.device,
        "processes": where.world_size,
        "torch": torch.__version__, "nucleate": nucleate.__version__,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if not where.main:  # rank 0 writes; the others wait for it so that no process ends before the files exist
        barrier()
        return report
    with atomic_dir(out) as staging:
        save_model(staging, result.model, extra=extra)
        atomic_write_text(staging / "model_card.json", json.dumps(card, indent=2, sort_keys=True) + "\n")
        _write_history(staging / "training.csv", result.history)
    if student_probs is not None or student_features is not None:
        report.student_rows = _student_tables(result.model, predict, classes, entries, root, scale, extra,
                                              student_probs, student_features, log, transform)
    barrier()
    return report


def content_hash_json(value: Any) -> str:
    """A stable id of a JSON-ready value (the checkpoint fingerprint)."""
    return hashlib.blake2b(json.dumps(value, sort_keys=True).encode(), digest_size=16).hexdigest()


def _round(points: pa.Table | None) -> int:
    """The latest annotation round in the points table (0 without one: supervision full)."""
    if points is None:
        return 0
    rounds = points.column("round").to_numpy()
    return int(rounds.max()) if rounds.size else 0


def _student_tables(model, window: PredictParams, classes, entries, root, scale, extra, probs_path, features_path,
                    log, stain: StainTransform) -> int:
    """Image-head probabilities and pooled embeddings of every pool image (predict's sliding window)."""
    ids, probs, features = [], [], []
    started = time.perf_counter()
    for image_id, entry in sorted(entries.items(), key=lambda kv: kv[1]["path"]):
        if entry["split"] != "pool":
            continue
        x = network_input(_read(root, entry, stain.student), scale)
        maps = predict_maps(model, x, window_px=window.window_px, overlap=window.overlap,
                            batch_size=window.batch_size, device=window.device)
        ids.append(image_id)
        probs.append(maps.image_probs)
        features.append(maps.embedding)
    model_id = f"nucleate-student:{extra['supervision']}:round-{extra['round']}"
    if probs_path is not None:
        write_table("student_probs", probs_table(ids, np.stack(probs), classes=list(classes), teacher_id=model_id),
                    probs_path)
    if features_path is not None:
        write_table("student_features", {"image_id": ids, "features": [f.tolist() for f in features]}, features_path,
                    metadata={"model_id": model_id})
    log.info(f"train: student tables for {len(ids)} images in {time.perf_counter() - started:.0f} s")
    return len(ids)


def command(
    manifest: Path = typer.Option(LAYOUT.manifest, help="Manifest table of the images."),
    points: Path = typer.Option(LAYOUT.consensus, help="Points to train from (qu2019 / donuseg): one row per nucleus."),
    pseudomasks: Path = typer.Option(LAYOUT.pseudomasks, help="Pseudo-masks made from --points (else made in memory)."),
    masks: Path | None = typer.Option(None, help="Ground-truth instance masks mirroring the image folder: "
                                      "supervision full, and the gold Dice in the training log."),
    teacher_probs: Path = typer.Option(LAYOUT.teacher_probs, help="Teacher probabilities (KD); skipped if absent."),
    out: Path = typer.Option(LAYOUT.model, help="Model folder to (re)create."),
    student_probs: Path = typer.Option(LAYOUT.student_probs, help="Write the student's image probabilities here."),
    student_features: Path = typer.Option(LAYOUT.student_features, help="Write the student's embeddings here."),
    checkpoints: Path = typer.Option(LAYOUT.checkpoints, help="Folder of the per-epoch checkpoint."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint of the same run."),
    params: Path = typer.Option(Path("params.yaml"),
                                help="params file (model, train, donuseg, pseudomask, stain, seed)."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes on this machine (torchrun): one per GPU, or CPU "
                              "processes; train.batch_size is the global batch they share."),
) -> None:
    """Train the student U-Net from clicked points (or full masks) and write storage/model."""
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        args = [("--manifest", manifest), ("--points", points), ("--pseudomasks", pseudomasks), ("--masks", masks),
                ("--teacher-probs", teacher_probs), ("--out", out), ("--student-probs", student_probs),
                ("--student-features", student_features), ("--checkpoints", checkpoints), ("--params", params)]
        argv = [str(v) for pair in args if pair[1] is not None for v in pair] + (["--resume"] if resume else [])
        raise typer.Exit(launch(nproc, argv))
    cfg = load_params_or_exit(params)
    with stage_errors(TrainError, ModelError, DeviceError):
        report = run(cfg.model, cfg.train, cfg.donuseg, cfg.pseudomask, cfg.predict, cfg.teacher.classes, cfg.seed,
                     manifest=manifest, out=out, points=points, pseudomasks=pseudomasks, masks=masks,
                     teacher_probs=teacher_probs, student_probs=student_probs, student_features=student_features,
                     checkpoints=checkpoints, resume=resume, progress=sys.stderr.isatty(), stain=cfg.stain)
    if report.rank == 0:
        for line in report.lines():
            typer.echo(line)


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m tasks.train *argv`` in ``nproc`` processes on this machine (torchrun, ``--standalone``).

    The processes' output passes through until one of them prints an ``error:`` line; from then on only
    the distinct ``error:`` lines are shown (every rank reports a shared problem, and torchrun adds its
    own report of the failed processes), so a bad setting reads as one line. Returns the exit status.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc-per-node", str(nproc), "-m", "tasks.train", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # torchrun's default
    seen: list[str] = []
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("error:"):
                if line not in seen:
                    seen.append(line)
                    sys.stderr.write(line)
            elif not seen:
                sys.stderr.write(line)
            sys.stderr.flush()
    if proc.returncode and not seen:
        typer.echo(f"error: torchrun with {nproc} processes failed (exit status {proc.returncode}); the lines above "
                   "are its report", err=True)
    return 1 if proc.returncode else 0


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.train [--points ...] [--resume]``."""
    run_alone(command, argv)


if __name__ == "__main__":
    main()
