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

Whole-slide images (``--images`` a slide file, or slides in the folder: :data:`nucleate.slides.SLIDE_SUFFIXES`
files and pyramidal TIFFs, :func:`nucleate.slides.is_slide_file`) are predicted tile by tile, never whole: the
tissue mask once per slide, then the tiles of :func:`nucleate.slides.tile_grid` (params ``slides``: ``tile_px`` px
at ``target_mpp``, the same tiles ``ingest`` puts in the pool), each segmented in a window of the tile plus
``slides.predict_overlap_px / 2`` px on every side (:func:`nucleate.slides.read_window`) and keeping the nuclei
whose centre lies in the tile (:func:`nucleate.slides.stitch_tile`): a nucleus across a tile border is one
nucleus, kept by one tile, when the overlap is at least its diameter. The nucleus radius settings apply to the
tiles (pixels at ``target_mpp``; default: the model's training data, i.e. a student trained on tiles at the same
``target_mpp``). A slide ``<rel>.svs`` gives::

    <rel>.geojson                  QuPath detections (File > Import objects): one feature per nucleus, its outline
                                   as a Polygon in level-0 px, ``measurements.score``, class = the first label
    <rel>/<tile image_id>.tif      int32 instances of each tile (tile_px x tile_px at target_mpp, the pixels
                                   ``read_pool_image`` gives that pool tile): the nuclei it owns, k + 1 = its
                                   k-th row in the table, cut at the tile's edge (their GeoJSON outline is whole)
                                   (one with its centre but no pixel in the tile is absent)
    points.parquet rows            image_id = the tile's pool id (Tile.image_id), x, y in tile px, slide_id /
                                   slide_x / slide_y = the slide's content id and the centre in level-0 px

Memory stays bounded whatever the slide's size: tiles stream through the mapper and each tile's outlines are
written to the GeoJSON as it arrives; only the table's rows (a few numbers per nucleus) are held. A slide that
cannot be opened or read (truncated, no resolution metadata, a format tiffslide cannot read) is a per-image
failure like an unreadable image.

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
from nucleate.annotations.formats import qupath_detection
from nucleate.config import PredictParams, SlidesParams
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
from nucleate.slides import (
    SLIDE_SUFFIXES,
    SlideError,
    Tile,
    is_slide_file,
    open_slide,
    stitch_tile,
    tile_grid,
    tissue_mask,
)
from nucleate.slides.pool import cached_slide
from nucleate.slides.read import read_window
from tasks._map import SEQUENTIAL, Mapper, open_mapper, per_image_failure
from tasks._stage import Report, StageError, load_params_or_exit, logger, run_alone, stage_errors

__all__ = ["PredictError", "PredictReport", "PredictSpec", "command", "main", "parse_radius", "predict_image",
           "predict_tile", "run"]

#: log a progress line every this many images
LOG_EVERY = 20


#: errors of one image that leave it out (reported) instead of failing the stage: it cannot be read
PER_IMAGE_ERRORS: tuple[type[BaseException], ...] = (ImageError, OSError)
#: errors of one slide (or one of its tiles) that leave the slide out (reported) instead of failing the stage
PER_SLIDE_ERRORS: tuple[type[BaseException], ...] = (SlideError, ImageError, OSError)
#: a progress line every this many tiles of a slide
LOG_EVERY_TILES = 200


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
    slides: int = 0  # whole-slide images predicted (``images`` counts plain images)
    tiles: int = 0  # their tiles

    def lines(self) -> list[str]:
        """One summary line."""
        failed = f", {len(self.failed)} failed" if self.failed else ""
        slides = f", {self.slides} slides ({self.tiles} tiles)" if self.slides else ""
        return [f"predict: {self.images} images{slides}{failed}, {self.instances} instances in {self.seconds:.1f} s "
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
    slides: SlidesParams | None = None,
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
    ``images`` may also be one whole-slide file; ``slides`` (``params.slides``; None: the shipped defaults) sets
    how slides are tiled (module docstring).
    """
    log = log or logger("predict")
    started = time.perf_counter()
    model_dir = LAYOUT.require("model", model)
    slides = slides or SlidesParams()
    out = Path(out)
    if images is not None and Path(images).is_file():  # one whole-slide file
        if Path(images).suffix.lower() not in (*SLIDE_SUFFIXES, ".tif", ".tiff"):  # a TIFF is tried as a slide
            raise PredictError(f"{images}: not a whole-slide image ({', '.join(SLIDE_SUFFIXES)} or a pyramidal "
                               "TIFF); pass --images a slide file or a folder of images")
        root, files, slide_paths = Path(images).parent, [], [Path(images)]
    else:
        root = _images_root(images, manifest)
        if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
            raise PredictError(f"{out}: the output folder is inside the image folder {root}; write it elsewhere")
        files, slide_paths = _split_slides(root)
    if not files and not slide_paths:
        raise PredictError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)} files) or slides "
                           f"({', '.join(SLIDE_SUFFIXES)}) in this folder or below it; point --images at a folder "
                           "of images or a slide file")
    targets: dict[Path, Path] = {}
    for path in files:
        rel = path.relative_to(root).with_suffix(".tif")
        if rel in targets:
            raise PredictError(f"{path} and {targets[rel]} would both be predicted to {rel}; rename one of them")
        targets[rel] = path
    slide_targets: dict[Path, Path] = {}
    for path in slide_paths:
        rel = path.relative_to(root).with_suffix("")  # -> <rel>.geojson and <rel>/ (tiles named by their id)
        if rel in slide_targets:
            raise PredictError(f"{path} and {slide_targets[rel]} would both be predicted to {rel}.geojson; rename "
                               "one of them")
        slide_targets[rel] = path
    radius = parse_radius(nucleus_radius_px)
    device = resolve_device(predict.device, setting="predict.device")
    loaded = load_model(model_dir, map_location=device)
    r_model = model_radius(loaded.extra)
    round_ = int(loaded.extra.get("round") or 0)
    markers = resolve_markers(predict.markers, loaded.extra)
    kinds = f"{len(files)} images" + (f" and {len(slide_paths)} slides" if slide_paths else "")
    log.info(f"predict: {kinds} under {root}, model {model_dir} (round {round_}, nucleus radius "
             f"{r_model:g} px, {markers} markers) on {device}")
    label = labels[0] if labels else "nucleus"
    report = PredictReport(out)
    columns: dict[str, list] = {"image_id": [], "x": [], "y": [], "score": []}
    on_slides: dict[str, list] = {"slide_id": [], "slide_x": [], "slide_y": []}
    slide_meta: list[dict] = []
    radii: list[float] = []
    pixels = 0
    with open_mapper(mapper) as where, atomic_dir(out) as staging:
        if where is not SEQUENTIAL:
            log.info(f"predict: {kinds} on {where.name}")
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
        for rel, path in slide_targets.items():
            try:
                row = _predict_slide(where, spec, slides, path, rel, staging, labels, log)
            except PER_SLIDE_ERRORS as exc:
                reason = str(exc)
                reason = reason[len(str(path)) + 2:] if reason.startswith(f"{path}: ") else reason
                report.failed.append((path.relative_to(root).as_posix(), reason or type(exc).__name__))
                log.warning(f"failed {path}: {reason}")
                continue
            n = len(row["scores"])
            columns["image_id"] += row["image_ids"]
            columns["x"] += row["xy"][:, 0].tolist()
            columns["y"] += row["xy"][:, 1].tolist()
            columns["score"] += row["scores"].tolist()
            on_slides["slide_id"] += [row["slide_id"]] * n
            on_slides["slide_x"] += row["slide_xy"][:, 0].tolist()
            on_slides["slide_y"] += row["slide_xy"][:, 1].tolist()
            slide_meta.append(row["meta"])
            report.slides += 1
            report.tiles += row["meta"]["tiles"]
            report.instances += n
            pixels += row["pixels"]
        report.failed.sort()
        if report.failed and strict:
            first = root / report.failed[0][0]
            raise PredictError(f"--strict: {len(report.failed)} image(s) could not be predicted (first: {first}: "
                               f"{report.failed[0][1]}); nothing written")
        if not done and not report.slides:
            if len(report.failed) == 1:
                raise PredictError(f"{root / report.failed[0][0]}: {report.failed[0][1]}; nothing written")
            raise PredictError(f"none of the {kinds} under {root} could be predicted (see the lines "
                               "above); nothing written")
        n_slide_rows = len(on_slides["slide_id"])
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
        if n_slide_rows:  # slide rows first, then plain-image rows (null slide columns)
            plain = len(columns["x"]) - n_slide_rows
            extra = {"slide_id": pa.array(on_slides["slide_id"] + [None] * plain, pa.string()),
                     "slide_x": pa.array(on_slides["slide_x"] + [None] * plain, pa.float64()),
                     "slide_y": pa.array(on_slides["slide_y"] + [None] * plain, pa.float64())}
        else:
            extra = {}
        table = points_table({
            "image_id": pa.array(columns["image_id"], pa.string()),
            "x": np.asarray(columns["x"], np.float64), "y": np.asarray(columns["y"], np.float64),
            "label": label, "annotator": "model", "round": round_, "origin": "prediction",
            "created_at": datetime.now(UTC), "score": pa.array(columns["score"], pa.float32()), **extra,
        }, source=str(out / "points.parquet"))
        write_table("predicted_points", table, staging / "points.parquet", metadata={
            "images_root": str(root), "model": str(model_dir), "round": round_,
            "supervision": loaded.extra.get("supervision"), "model_nucleus_radius_px": r_model,
            "nucleus_radius_px": "estimate" if radius == ESTIMATE else radius,
            "image_nucleus_radius_px_median": float(np.median(radii)) if radii else None, "markers": markers,
            **({"slides": slide_meta, "slides_params": dataclasses.asdict(slides)} if slide_meta else {}),
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


@dataclass(frozen=True)
class SlideJob:
    """What every tile of one slide shares: the slide file, the staging folder of its tile instances, the margin
    (tile px read around each tile)."""

    slide: str
    tile_dir: str
    margin_px: int


def predict_tile(spec: PredictSpec, job: SlideJob, tile: Tile) -> dict:
    """Segment one slide tile in its window (the tile + ``job.margin_px`` px around it) and keep the nuclei it owns
    (:func:`nucleate.slides.stitch_tile`); writes the tile's int32 instances (``tile_px`` square) to
    ``<job.tile_dir>/<tile.image_id>.tif`` and returns ``xy`` (K, 2) tile px, ``slide_xy`` (K, 2) level-0 px,
    ``scores`` (K,) and ``outlines`` (K closed rings, level-0 px). Top-level and picklable, like
    :func:`predict_image`. Raises :class:`nucleate.slides.SlideError` for a slide that cannot be read."""
    loaded = _cached_model(spec.model, spec.predict.device)
    window = read_window(cached_slide(job.slide, tile), tile, job.margin_px)
    try:
        seg = segment_image(loaded, window, spec.predict, nucleus_radius_px=spec.radius)
    except ValueError as exc:  # a radius that cannot be estimated: name the slide and tile
        raise PredictError(f"{job.slide}: tile at level-0 ({tile.x0}, {tile.y0}): {exc}") from None
    nuclei = stitch_tile(tile, job.margin_px, seg.labels, seg.centres, seg.scores, outlines=True)
    write_labels(Path(job.tile_dir) / f"{tile.image_id}.tif", nuclei.labels)
    return {"xy": nuclei.xy, "slide_xy": nuclei.slide_xy, "scores": nuclei.scores, "outlines": nuclei.outlines}


def _predict_slide(where: Mapper, spec: PredictSpec, params: SlidesParams, path: Path, rel: Path, staging: Path,
                   labels: tuple[str, ...], log: logging.Logger) -> dict:
    """Predict one slide tile by tile (module docstring) into ``staging``: ``<rel>.geojson`` and ``<rel>/``; returns
    its table rows (``image_ids``, ``xy``, ``slide_xy``, ``scores``), ``slide_id``, ``pixels`` and ``meta``. On any
    error its partial outputs are removed and the error raised."""
    import shutil

    started = time.perf_counter()
    slide_id = content_id(path)
    with open_slide(path, slide_id=slide_id, default_mpp=params.slide_mpp) as slide:
        tissue = tissue_mask(slide, params)
        tiles = tile_grid(slide, tissue, params)
        width0, height0 = slide.dimensions
        mpp = list(slide.mpp)
    margin = params.predict_overlap_px // 2
    tile_dir = staging / rel
    geojson = staging / rel.parent / f"{rel.name}.geojson"
    label = labels[0] if labels else "nucleus"
    log.info(f"predict: {path}: {width0} x {height0} px at {mpp[0]:g} um/px, {len(tiles)} tiles of "
             f"{params.tile_px} px at {params.target_mpp:g} um/px (+ {margin} px margin)")
    job = SlideJob(str(path), str(tile_dir), margin)
    ids: list[str] = []
    xy, slide_xy, scores = [np.zeros((0, 2))], [np.zeros((0, 2))], [np.zeros(0, np.float32)]
    tile_dir.mkdir(parents=True, exist_ok=True)
    try:
        with geojson.open("w", encoding="utf-8") as fh:
            fh.write('{"type": "FeatureCollection", "features": [\n')
            pending: dict[int, dict] = {}
            next_tile, written = 0, 0
            items = [(tile.image_id, tile) for tile in tiles]
            for outcome in where.map(functools.partial(predict_tile, spec, job), items):
                if outcome.error is not None:
                    raise outcome.error
                pending[outcome.index] = outcome.value
                while next_tile in pending:  # in tile order, whatever order the workers finished in
                    row, tile = pending.pop(next_tile), tiles[next_tile]
                    for k in range(len(row["scores"])):
                        feature = qupath_detection(
                            row["slide_xy"][k], row["scores"][k], label, labels, outline=row["outlines"][k],
                            key=f"{slide_id}|{tile.image_id}|{k}", properties={"tile": tile.image_id})
                        fh.write((",\n" if written else "") + json.dumps(feature, separators=(",", ":")))
                        written += 1
                    ids += [tile.image_id] * len(row["scores"])
                    xy.append(row["xy"])
                    slide_xy.append(row["slide_xy"])
                    scores.append(row["scores"])
                    next_tile += 1
                    if next_tile % LOG_EVERY_TILES == 0:
                        log.info(f"predict: {path}: {next_tile}/{len(tiles)} tiles, {written} nuclei "
                                 f"({time.perf_counter() - started:.0f} s)")
            fh.write("\n]}\n")
    except BaseException:
        geojson.unlink(missing_ok=True)
        shutil.rmtree(tile_dir, ignore_errors=True)
        raise
    meta = {"path": path.as_posix(), "slide_id": slide_id, "geojson": (rel.parent / f"{rel.name}.geojson").as_posix(),
            "tiles_dir": rel.as_posix(), "width0": width0, "height0": height0, "mpp": mpp,
            "tissue_fraction": tissue.fraction, "tiles": len(tiles), "instances": len(ids), "margin_px": margin}
    return {"image_ids": ids, "xy": np.concatenate(xy), "slide_xy": np.concatenate(slide_xy),
            "scores": np.concatenate(scores), "slide_id": slide_id, "pixels": len(tiles) * params.tile_px**2,
            "meta": meta}


def _split_slides(root: Path) -> tuple[list[Path], list[Path]]:
    """``(images, slides)`` under ``root`` in one walk (:func:`nucleate.io.image_files` with the slide suffixes too,
    as ingest scans): the files that are not slides, and the slides (pyramidal TIFFs among them, plus
    :data:`nucleate.slides.SLIDE_SUFFIXES` files; sorted, hidden ones skipped)."""
    images, slides = [], []
    for path in image_files(root, IMAGE_SUFFIXES + SLIDE_SUFFIXES):
        (slides if is_slide_file(path) else images).append(path)
    return images, sorted(slides)


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
        None, help="Folder of images and/or whole-slide images, searched recursively, or one slide file (default: "
                   "the folder the manifest was built from)."),
    out: Path = typer.Option(LAYOUT.predictions, help="Folder to (re)create: <image>.tif instances + points.parquet."),
    params: Path = typer.Option(Path("params.yaml"), help="params file (sections predict, labels, slides)."),
    nucleus_radius_px: str | None = typer.Option(
        None, help="Nucleus radius of the images in pixels, or 'estimate' (per image); default: the same "
                   "magnification as the training images."),
    manifest: Path = typer.Option(LAYOUT.manifest, help="Manifest whose root is the default --images."),
    strict: bool = typer.Option(False, help="Fail (write nothing) if any image cannot be read."),
) -> None:
    """Segment nuclei in every image of a folder (or a whole slide) with the trained student: instances + centre
    points (+ QuPath GeoJSON per slide)."""
    cfg = load_params_or_exit(params)
    with stage_errors():
        report = run(cfg.predict, cfg.labels, model=model, images=images, out=out,
                     nucleus_radius_px=nucleus_radius_px, manifest=manifest, strict=strict, slides=cfg.slides)
    for line in report.lines():
        typer.echo(line)


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.predict [--model ...] [--images ...] [--out ...]``."""
    run_alone(command, argv)


if __name__ == "__main__":
    main()
