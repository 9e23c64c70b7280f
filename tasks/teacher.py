"""Stage ``teacher``: class probabilities for every image in the manifest -> ``teacher_probs`` table.

Reads ``storage/manifest.parquet`` (image files resolved against the folder stored in its metadata as
``root``, or ``--images``; a whole-slide tile is read from its slide: :func:`nucleate.slides.read_pool_image`),
scores the images with the teacher configured in ``params.yaml`` (``teacher``
section; ``teacher.classes`` are the columns) and writes ``storage/teacher_probs.parquet`` atomically. The
table's metadata holds ``classes``, ``teacher_id``, ``templates``, ``backend``, ``cache_key`` and
``failed`` (one ``{image_id, path, reason}`` per image that could not be scored).

Rows already computed for the same (image_id, teacher, classes, templates, preprocessing) are read
from the cache folder (``--cache``, default ``storage/teacher_cache``), so after re-ingesting a grown pool
only the new images run through the model. An unreadable image is reported on its own line and
left out; the others are scored (``--strict`` fails the stage instead, writing nothing).
Progress: a tqdm bar when stderr is a terminal, plain ``teacher: N/M images`` log lines otherwise.
``workers`` (decoding threads) is a keyword of ``run()`` and a CLI option, not a ``params.yaml`` key: it
changes speed, never the probabilities (it is not in the cache key), like a thread count. Likewise ``mapper``
(:mod:`tasks._map`; the CLI takes it from ``NUCLEATE_DASK``): on a Dask cluster, each chunk of images is
loaded and scored by a worker (:func:`score_chunk_task`), which returns only the chunk's rows; the chunks are
the same as in-process, so are the probabilities.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from nucleate.config import TeacherParams
from nucleate.io import read_table, table_metadata, write_table
from nucleate.io.layout import LAYOUT
from nucleate.slides import PoolRows, read_pool_image
from nucleate.teacher import ProbsCache, load_teacher, score_images
from nucleate.teacher.base import Teacher
from nucleate.teacher.score import ChunkRunner, score_chunk
from tasks._map import SEQUENTIAL, Mapper, open_mapper
from tasks._stage import Report, StageError, load_params_or_exit, logger, run_alone, stage_errors

__all__ = ["TeacherReport", "teacher_options", "run", "command", "main", "score_chunk_task"]

#: threads decoding images ahead of the model (execution tuning: changes speed, never the probabilities)
DEFAULT_WORKERS = 2
#: images per teacher batch, and per Dask task (execution tuning: the same chunks wherever they run)
CHUNK_IMAGES = 64


@dataclass
class TeacherReport(Report):
    """What one run did; ``failed`` holds (image_id, path, reason)."""

    out: Path
    teacher_id: str
    scored: int = 0
    computed: int = 0
    from_cache: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """One summary line."""
        return [f"teacher: {self.scored} scored ({self.computed} computed, {self.from_cache} from cache), "
                f"{len(self.failed)} failed, {self.seconds:.1f} s -> {self.out}"]


def teacher_options(teacher: TeacherParams) -> tuple[str, dict]:
    """(backend, keyword options for :func:`nucleate.teacher.load_teacher`) from the ``teacher`` params."""
    common = {"classes": teacher.classes, "templates": teacher.templates}
    pixel = {"device": teacher.device, "batch_size": teacher.batch_size, "tile": teacher.tile,
             "max_tiles": teacher.max_tiles, "percentiles": (teacher.percentile_low, teacher.percentile_high)}
    if teacher.backend == "conse":
        return "conse", {**common, **pixel, "top_t": teacher.top_t, "temperature": teacher.temperature}
    if teacher.backend == "clip":
        return "clip", {**common, **pixel, "model": teacher.model, "allow_download": teacher.allow_download}
    return "file", {**common, "model": teacher.model}


class _Progress:
    """tqdm bar when stderr is a terminal; otherwise a log line about every 10 % (and at least every 30 s)."""

    def __init__(self, log: logging.Logger, tty: bool):
        self.log, self.tty, self.bar = log, tty, None
        self.last_line, self.last_pct = 0.0, -1

    def __call__(self, done: int, total: int) -> None:
        if self.tty:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="img", desc="teacher", file=sys.stderr)
            self.bar.update(done - self.bar.n)
            if done >= total:
                self.bar.close()
            return
        pct = 100 * done // max(total, 1)
        now = time.monotonic()
        if done in (0, total) or pct >= self.last_pct + 10 or now - self.last_line >= 30:
            self.log.info("teacher: %d/%d images", done, total)
            self.last_line, self.last_pct = now, pct


@dataclass(frozen=True)
class ChunkSpec:
    """What a worker needs to score a chunk: the teacher (backend + options) and the image folder."""

    backend: str
    options: dict[str, Any]
    root: str


#: teachers loaded in this process (a Dask worker scores many chunks with one), by their options
_TEACHERS: dict[str, Teacher] = {}


def _cached_teacher(backend: str, options: dict[str, Any]) -> Teacher:
    key = json.dumps([backend, options], sort_keys=True, default=str)
    if key not in _TEACHERS:
        if backend in ("clip", "conse"):
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        _TEACHERS.clear()  # one teacher at a time: they can be large
        _TEACHERS[key] = load_teacher(backend, **options)
    return _TEACHERS[key]


def score_chunk_task(spec: ChunkSpec, chunk: list[tuple[str, dict]]) -> tuple[dict, list[tuple[str, str]]]:
    """Score one chunk of ``(image_id, manifest row)`` (the row's ``path`` is relative to ``spec.root``; a tile
    row is read from its slide) in this process (a Dask worker): ``(image_id -> (C,) float32 probabilities,
    [(image_id, reason)] of the images that failed)``."""
    model = _cached_teacher(spec.backend, spec.options)
    rows = dict(chunk)
    return score_chunk(model, [i for i, _ in chunk], lambda image_id: read_pool_image(spec.root, rows[image_id]))


def _chunk_runner(mapper: Mapper, spec: ChunkSpec, rows: Mapping[str, dict]) -> ChunkRunner:
    """Chunks scored by ``mapper`` (one task per chunk); an error that is not about one image is raised."""

    def run_chunks(chunks: list[list[str]]):
        items = ((part[0], [(i, rows[i]) for i in part]) for part in chunks)  # rows built as chunks are sent
        for outcome in mapper.map(functools.partial(score_chunk_task, spec), items):
            if outcome.error is not None:
                raise outcome.error
            scored, failed = outcome.value
            yield chunks[outcome.index], scored, failed

    return run_chunks


def run(
    teacher: TeacherParams,
    *,
    manifest: str | Path,
    out: str | Path,
    images: str | Path | None = None,
    cache: str | Path | None = None,
    strict: bool = False,
    workers: int = DEFAULT_WORKERS,
    mapper: Mapper | None = None,
    log: logging.Logger | None = None,
) -> TeacherReport:
    """Score every manifest image with the ``teacher`` params and write the ``teacher_probs`` table to ``out``.

    ``images`` overrides the image folder stored in the manifest; ``cache`` is the score cache folder
    (None = no cache); ``workers`` threads decode images ahead of the model (speed only); ``mapper`` scores
    the chunks elsewhere (None: the one ``NUCLEATE_DASK`` names, else in this process; speed only). Raises
    :class:`StageError` when no image could be scored, or with ``strict`` when any failed (``out`` is then
    left untouched); ``MissingInput`` without a manifest; ``TeacherError`` for configuration problems.
    """
    log = log or logger("teacher")
    started = time.perf_counter()
    manifest, out = LAYOUT.require("manifest", manifest), Path(out)
    table = read_table("manifest", manifest)
    root = Path(images) if images is not None else Path(table_metadata(table).get("root", manifest.parent))
    rows = PoolRows(table)  # image_id -> manifest row, built when a chunk needs it
    if not rows:
        raise StageError(f"{manifest}: the manifest has no images; run `nucleate ingest FOLDER` first")

    with open_mapper(mapper) as where:  # a cluster that cannot be reached fails here, before anything is written
        result, model = _score(teacher, where, rows, root, cache, workers, log)
    failed = [(image_id, rows[image_id]["path"], reason) for image_id, reason in result.failed]
    for image_id, rel, reason in failed:
        log.warning("failed %s (%s): %s", rel, image_id, reason)
    if not result.image_ids:
        raise StageError(f"none of the {len(rows)} images could be scored (see the lines above); {out} not written")
    if strict and failed:
        raise StageError(f"--strict: {len(failed)} image(s) could not be scored; {out} not written")
    write_table("teacher_probs", result.table(), out, metadata={
        "templates": list(model.templates),
        "backend": model.backend,
        "cache_key": model.cache_key,
        "failed": [{"image_id": i, "path": p, "reason": r} for i, p, r in failed],
    })
    return TeacherReport(out, model.teacher_id, len(result.image_ids), result.computed, result.from_cache,
                         failed, time.perf_counter() - started)


def _score(teacher: TeacherParams, where: Mapper, rows: Mapping[str, dict], root: Path, cache: str | Path | None,
           workers: int, log: logging.Logger):
    """(score result, teacher) of every image in ``rows`` (image_id -> manifest row; paths under ``root``)."""
    backend, options = teacher_options(teacher)
    if backend in ("clip", "conse"):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars; our own progress follows
    model = load_teacher(backend, **options)
    log.info("teacher: %s, %d images, classes %s", model.teacher_id, len(rows), ", ".join(model.classes))
    store = None
    if cache is not None:
        Path(cache).mkdir(parents=True, exist_ok=True)
        store = ProbsCache(cache, log=log.info)

    def load(image_id: str):
        return read_pool_image(root, rows[image_id])

    runner = None
    if where is not SEQUENTIAL:
        log.info("teacher: scoring on %s", where.name)
        runner = _chunk_runner(where, ChunkSpec(backend, options, str(root)), rows)
    return score_images(model, list(rows), load, cache=store, workers=workers, chunk=CHUNK_IMAGES,
                        progress=_Progress(log, sys.stderr.isatty()), run_chunks=runner), model


def command(
    params: Path = typer.Option(Path("params.yaml"), help="params file (section `teacher`)."),
    manifest: Path = typer.Option(LAYOUT.manifest, help="Manifest table (from `nucleate ingest`)."),
    out: Path = typer.Option(LAYOUT.teacher_probs, help="teacher_probs table to write."),
    images: Path | None = typer.Option(None, help="Image folder; default: the folder stored in the manifest."),
    cache: Path = typer.Option(LAYOUT.teacher_cache, help="Score cache folder (reused across runs)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Compute every image; neither read nor write the cache."),
    strict: bool = typer.Option(False, help="Fail (write nothing) if any image cannot be scored."),
    workers: int = typer.Option(DEFAULT_WORKERS, min=1, help="Threads decoding images ahead of the model."),
) -> None:
    """Score every manifest image with the teacher (class probabilities) and write the teacher_probs table."""
    with stage_errors():
        cfg = load_params_or_exit(params)
        report = run(cfg.teacher, manifest=manifest, out=out, images=images, cache=None if no_cache else cache,
                     strict=strict, workers=workers)
    for line in report.lines():
        typer.echo(line)


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.teacher [--manifest ...] [--out ...]``."""
    run_alone(command, argv)


if __name__ == "__main__":
    main()
