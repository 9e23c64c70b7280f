"""Stage ``predict``: a saved student + a folder of images -> nucleus instances and centres of every image.

Every image under ``images`` (recursive; the suffixes of :data:`nucleate.io.IMAGE_SUFFIXES`, any size, 8/16-bit,
gray or RGB; the model need not have seen the folder) gets, under ``out`` (default ``storage/predictions``)::

    <relative path, suffix .tif>   int32 instances (0 background, 1..K) at the image's native size;
                                   images/pool/a.png -> <out>/pool/a.tif
    points.parquet                 ``predicted_points`` table: one row per instance, its centre (x = column,
                                   y = row, native pixels, corner origin), ``score`` (mean nucleus probability),
                                   image_id = the file's content id (joins the manifest), label = the first of
                                   params ``labels``, annotator ``model``, round = the model's training round
                                   (0 when the model does not record it), origin ``prediction``; rows of one
                                   image in instance order (row k = instance k + 1). These are the next
                                   round's pre-annotations.

Scale: the network works at the nucleus radius it was trained at (the model's ``nucleus_radius_px``). Each
image's nucleus radius is ``nucleus_radius_px`` when given (pixels, every image), that of the training data
when not (same magnification as training), or estimated per image with ``"estimate"``
(:func:`nucleate.inference.estimate_nucleus_radius`); images are resized by the ratio before the network and
their instances resized back (:func:`nucleate.inference.segment_image`).

An image that cannot be read is reported (a ``failed ...`` log line, ``failed`` in the table metadata) and the
others are predicted (``--strict``: the stage fails instead). The output folder is built beside ``out`` and
swapped in whole (:func:`nucleate.io.atomic_dir`): a model error, ``--strict`` or an interruption leaves the
previous predictions as they were.

Each image is segmented by :func:`predict_image` (top-level, picklable: it writes that image's instances into
the staging folder and returns its centres and scores), in this process or, with ``NUCLEATE_DASK`` set, on a
Dask cluster whose workers load the model once each (:mod:`tasks._map`); the outputs are the same.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import typer

from nucleate.annotations import points_table
from nucleate.config import PredictParams
from nucleate.device import resolve_device
from nucleate.inference import ESTIMATE, model_radius, resolve_markers, segment_image
from nucleate.io import (
    IMAGE_SUFFIXES,
    LAYOUT,
    ImageError,
    MissingInput,
    content_id,
    image_files,
    read_image,
    read_table,
    table_metadata,
    write_labels,
    write_table,
)
from nucleate.io.atomic import atomic_dir
from nucleate.models import load_model
from nucleate.models.persist import WEIGHTS_FILE, LoadedModel
from tasks._map import SEQUENTIAL, Mapper, open_mapper, per_image_failure
from tasks._stage import Report, StageError, load_params_or_exit, logger, run_alone, stage_errors

__all__ = ["PredictError", "PredictReport", "PredictSpec", "command", "main", "parse_radius", "predict_image", "run"]

#: log a progress line every this many images
LOG_EVERY = 20


#: errors of one image that leave it out (reported) instead of failing the stage: it cannot be read
PER_IMAGE_ERRORS: tuple[type[BaseException], ...] = (ImageError, OSError)


class PredictError(StageError):
    """Bad input to ``predict``: no images, clashing outputs, an output folder inside the input folder."""


@dataclass
class PredictReport(Report):
    """What one run did: images segmented, instances found, wall time and throughput (megapixels / s)."""

    out: Path
    images: int = 0
    instances: int = 0
    seconds: float = 0.0
    megapixels: float = 0.0
    megapixels_per_s: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image path under the image folder, reason)

    def lines(self) -> list[str]:
        """One summary line."""
        failed = f", {len(self.failed)} failed" if self.failed else ""
        return [f"predict: {self.images} images{failed}, {self.instances} instances in {self.seconds:.1f} s "
                f"({self.megapixels_per_s:.2f} megapixels/s) -> {self.out}"]


def parse_radius(value: str | float | None) -> float | str | None:
    """``--nucleus-radius-px``: None, a positive number of pixels, or ``estimate``; ValueError otherwise."""
    if value is None or isinstance(value, int | float):
        radius = value
    elif value.strip().lower() == ESTIMATE:
        return ESTIMATE
    else:
        try:
            radius = float(value)
        except ValueError:
            radius = None
        if radius is None:
            raise ValueError(f"--nucleus-radius-px must be a number of pixels or {ESTIMATE!r}, got {value!r}")
    if radius is not None and not (np.isfinite(radius) and radius > 0):
        raise ValueError(f"--nucleus-radius-px must be a positive number of pixels, got {value!r}")
    return None if radius is None else float(radius)


def run(
    predict: PredictParams,
    labels: tuple[str, ...],
    *,
    model: str | Path,
    images: str | Path | None,
    out: str | Path,
    nucleus_radius_px: float | str | None = None,
    manifest: str | Path | None = None,
    strict: bool = False,
    mapper: Mapper | None = None,
    log: logging.Logger | None = None,
) -> PredictReport:
    """Segment every image under ``images`` with the student saved in ``model``; write ``out`` (module docstring).

    ``predict`` and ``labels`` are the params.yaml values (``params.predict``, ``params.labels``: the points get
    the first label). ``images`` None = the folder the manifest (``manifest``, default ``storage/manifest.parquet``)
    was built from. ``nucleus_radius_px``: see :func:`nucleate.inference.segment_image`. Raises
    :class:`MissingInput` for a missing model / image folder / manifest, :class:`nucleate.models.ModelError`
    for a model from another version or a corrupt one, :class:`PredictError` for no images, clashing outputs
    or (``strict``) an unreadable image; nothing is written then. Without ``strict`` an image that cannot be
    read is reported (log line, ``report.failed``, the table's ``failed`` metadata) and the others are done.
    ``mapper``: where the per-image work runs (:mod:`tasks._map`; None: ``NUCLEATE_DASK``, else here).
    """
    log = log or logger("predict")
    started = time.perf_counter()
    model_dir = LAYOUT.require("model", model)
    root = _images_root(images, manifest)
    out = Path(out)
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise PredictError(f"{out}: the output folder is inside the image folder {root}; write it elsewhere")
    files = list(image_files(root))
    if not files:
        raise PredictError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)} files) in this folder or below it; "
                           "point --images at a folder of images")
    targets: dict[Path, Path] = {}
    for path in files:
        rel = path.relative_to(root).with_suffix(".tif")
        if rel in targets:
            raise PredictError(f"{path} and {targets[rel]} would both be predicted to {rel}; rename one of them")
        targets[rel] = path
    radius = parse_radius(nucleus_radius_px)
    device = resolve_device(predict.device, setting="predict.device")
    loaded = load_model(model_dir, map_location=device)
    r_model = model_radius(loaded.extra)
    round_ = int(loaded.extra.get("round") or 0)
    markers = resolve_markers(predict.markers, loaded.extra)
    log.info(f"predict: {len(files)} images under {root}, model {model_dir} (round {round_}, nucleus radius "
             f"{r_model:g} px, {markers} markers) on {device}")
    label = labels[0] if labels else "nucleus"
    report = PredictReport(out)
    columns: dict[str, list] = {"image_id": [], "x": [], "y": [], "score": []}
    radii: list[float] = []
    pixels = 0
    with open_mapper(mapper) as where, atomic_dir(out) as staging:
        if where is not SEQUENTIAL:
            log.info(f"predict: {len(files)} images on {where.name}")
        spec = PredictSpec(str(model_dir), predict, radius, str(staging))
        _MODELS.clear()
        _MODELS[_model_key(spec.model, predict.device)] = loaded  # this process (sequential) reuses it
        items = [(str(rel), (str(rel), str(path))) for rel, path in targets.items()]
        done: dict[int, dict] = {}
        for outcome in where.map(functools.partial(predict_image, spec), items):
            path = items[outcome.index][1][1]
            reason = per_image_failure(outcome, PER_IMAGE_ERRORS)
            if reason is not None:
                report.failed.append((Path(path).relative_to(root).as_posix(), reason))
                log.warning(f"failed {path}: {reason}")
                continue
            done[outcome.index] = outcome.value
            if len(done) % LOG_EVERY == 0:
                log.info(f"predict: {len(done)}/{len(files)} images ({time.perf_counter() - started:.0f} s)")
        report.failed.sort()
        if report.failed and strict:
            first = root / report.failed[0][0]
            raise PredictError(f"--strict: {len(report.failed)} image(s) could not be predicted (first: {first}: "
                               f"{report.failed[0][1]}); nothing written")
        if not done:
            raise PredictError(f"none of the {len(files)} images under {root} could be predicted (see the lines "
                               "above); nothing written")
        for k in sorted(done):  # the images' order, whatever order the workers finished in
            row = done[k]
            n = len(row["scores"])
            columns["image_id"] += [row["image_id"]] * n
            columns["x"] += row["centres"][:, 0].tolist()
            columns["y"] += row["centres"][:, 1].tolist()
            columns["score"] += row["scores"].tolist()
            radii.append(row["nucleus_radius_px"])
            report.images += 1
            report.instances += n
            pixels += row["pixels"]
        table = points_table({
            "image_id": pa.array(columns["image_id"], pa.string()),
            "x": np.asarray(columns["x"], np.float64), "y": np.asarray(columns["y"], np.float64),
            "label": label, "annotator": "model", "round": round_, "origin": "prediction",
            "created_at": datetime.now(UTC), "score": pa.array(columns["score"], pa.float32()),
        }, source=str(out / "points.parquet"))
        write_table("predicted_points", table, staging / "points.parquet", metadata={
            "images_root": str(root), "model": str(model_dir), "round": round_,
            "supervision": loaded.extra.get("supervision"), "model_nucleus_radius_px": r_model,
            "nucleus_radius_px": "estimate" if radius == ESTIMATE else radius,
            "image_nucleus_radius_px_median": float(np.median(radii)), "markers": markers,
            "params": dataclasses.asdict(predict), "spec": json.loads(json.dumps(loaded.spec.to_dict())),
            **({"failed": [{"path": p, "reason": r} for p, r in report.failed]} if report.failed else {}),
        })
    report.seconds = round(time.perf_counter() - started, 3)
    report.megapixels = round(pixels / 1e6, 4)
    report.megapixels_per_s = round(pixels / 1e6 / max(report.seconds, 1e-9), 4)
    return report


@dataclass(frozen=True)
class PredictSpec:
    """What every image's work shares: the model folder, the ``predict`` params, the nucleus radius setting and
    the staging folder (paths as strings: a worker on another machine mounts them at the same paths)."""

    model: str
    predict: PredictParams
    radius: float | str | None
    staging: str


#: students loaded in this process (a Dask worker predicts many images with one), by folder + weights file state
_MODELS: dict[tuple, LoadedModel] = {}


def _model_key(model: str, device: str) -> tuple:
    weights = Path(model) / WEIGHTS_FILE
    stat = weights.stat() if weights.is_file() else None
    return (str(Path(model).resolve()), device, None if stat is None else (stat.st_mtime_ns, stat.st_size))


def _cached_model(model: str, device: str) -> LoadedModel:
    key = _model_key(model, device)
    if key not in _MODELS:
        _MODELS.clear()  # one student at a time
        _MODELS[key] = load_model(model, map_location=resolve_device(device, setting="predict.device"))
    return _MODELS[key]


def predict_image(spec: PredictSpec, item: tuple[str, str]) -> dict:
    """Segment one image ``(output path relative to the staging folder, image path)``: writes its instances
    (int32 ``.tif``) below ``spec.staging`` and returns its row: ``image_id`` (content id), ``centres`` (K, 2)
    float64 (x, y) px, ``scores`` (K,) float32, ``nucleus_radius_px`` and ``pixels`` (H * W).

    Raises :class:`nucleate.io.ImageError` / ``OSError`` for an image that cannot be read (a per-image failure),
    :class:`PredictError` for a radius that cannot be estimated."""
    rel, path = item
    loaded = _cached_model(spec.model, spec.predict.device)
    image = read_image(path)
    try:
        seg = segment_image(loaded, image, spec.predict, nucleus_radius_px=spec.radius)
    except ValueError as exc:  # a radius that cannot be estimated: name the image
        raise PredictError(f"{path}: {exc}") from None
    write_labels(Path(spec.staging) / rel, seg.labels)
    return {"image_id": content_id(path), "centres": np.asarray(seg.centres, np.float64),
            "scores": np.asarray(seg.scores), "nucleus_radius_px": float(seg.nucleus_radius_px),
            "pixels": int(image.shape[0] * image.shape[1])}


def _images_root(images: str | Path | None, manifest: str | Path | None) -> Path:
    """``images``, or the folder the manifest was built from; MissingInput when it does not exist."""
    if images is None:
        manifest_path = LAYOUT.require("manifest", manifest)
        root = Path(table_metadata(read_table("manifest", manifest_path)).get("root", "."))
    else:
        root = Path(images)
    if not root.is_dir():
        raise MissingInput(f"{root}: image folder not found; pass --images a folder of images")
    return root


def command(
    model: Path = typer.Option(LAYOUT.model, help="Saved student folder (student.json + student.pt)."),
    images: Path | None = typer.Option(
        None, help="Folder of images, searched recursively (default: the folder the manifest was built from)."),
    out: Path = typer.Option(LAYOUT.predictions, help="Folder to (re)create: <image>.tif instances + points.parquet."),
    params: Path = typer.Option(Path("params.yaml"), help="params file (sections predict, labels)."),
    nucleus_radius_px: str | None = typer.Option(
        None, help="Nucleus radius of the images in pixels, or 'estimate' (per image); default: the same "
                   "magnification as the training images."),
    manifest: Path = typer.Option(LAYOUT.manifest, help="Manifest whose root is the default --images."),
    strict: bool = typer.Option(False, help="Fail (write nothing) if any image cannot be read."),
) -> None:
    """Segment nuclei in every image of a folder with the trained student: instances + centre points."""
    cfg = load_params_or_exit(params)
    with stage_errors():
        report = run(cfg.predict, cfg.labels, model=model, images=images, out=out,
                     nucleus_radius_px=nucleus_radius_px, manifest=manifest, strict=strict)
    for line in report.lines():
        typer.echo(line)


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.predict [--model ...] [--images ...] [--out ...]``."""
    run_alone(command, argv)


if __name__ == "__main__":
    main()
