"""Stage ``teacher``: class probabilities for every image in the manifest -> ``teacher_probs`` table.

Reads ``storage/manifest.parquet`` (image files resolved against the folder stored in its metadata as
``root``, or ``--images``), scores the images with the teacher configured in ``params.yaml``
(``teacher`` section + ``classes``) and writes ``storage/teacher_probs.parquet`` atomically. The
table's metadata holds ``classes``, ``teacher_id``, ``templates``, ``backend``, ``cache_key`` and
``failed`` (one ``{image_id, path, reason}`` per image that could not be scored).

Rows already computed for the same (image_id, teacher, classes, templates, preprocessing) are read
from the cache folder (``--cache``, default ``storage/teacher_cache``), so after re-ingesting a grown
pool only the new images run through the model. An unreadable image is reported on its own line and
left out; the others are scored (``--strict`` fails the stage instead, writing nothing).
Progress: a bar on a terminal, plain ``teacher: N/M images`` lines otherwise.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import typer

from nucleate.config import Params, ParamsError, load_params
from nucleate.io import read_image, read_table, table_metadata, write_table
from nucleate.teacher import ProbsCache, TeacherError, load_teacher, score_images
from tasks._stage import fail, run_alone

__all__ = ["TeacherStageError", "TeacherReport", "teacher_options", "run", "command", "main"]


class TeacherStageError(RuntimeError):
    """The stage cannot produce a table (nothing scorable, or --strict with failures)."""


@dataclass
class TeacherReport:
    """What one run did; ``failed`` holds (image_id, path, reason)."""

    out: Path
    teacher_id: str
    scored: int = 0
    computed: int = 0
    from_cache: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0


def teacher_options(params: Params) -> tuple[str, dict]:
    """(backend, keyword options for :func:`nucleate.teacher.load_teacher`) from validated params."""
    t = params.teacher
    common = {"classes": t.classes, "templates": t.templates}
    pixel = {"device": t.device, "batch_size": t.batch_size, "tile": t.tile, "max_tiles": t.max_tiles,
             "percentiles": (t.percentile_low, t.percentile_high)}
    if t.backend == "conse":
        return "conse", {**common, **pixel, "top_t": t.top_t, "temperature": t.temperature}
    if t.backend == "clip":
        return "clip", {**common, **pixel, "model": t.model, "allow_download": t.allow_download}
    return "file", {**common, "model": t.model}


class _Progress:
    """tqdm bar on a TTY; otherwise a log line about every 10 % (and at least every 30 s)."""

    def __init__(self, log: Callable[[str], None], tty: bool):
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
            self.log(f"teacher: {done}/{total} images")
            self.last_line, self.last_pct = now, pct


def run(
    manifest: str | Path,
    out: str | Path,
    params: Params,
    *,
    images: str | Path | None = None,
    cache: str | Path | None = "storage/teacher_cache",
    strict: bool = False,
    workers: int = 2,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    tty: bool | None = None,
) -> TeacherReport:
    """Score every manifest image and write the ``teacher_probs`` table to ``out``.

    ``images`` overrides the image folder stored in the manifest; ``cache=None`` disables the cache.
    Raises :class:`TeacherStageError` when no image could be scored, or with ``strict`` when any failed;
    ``out`` is then left untouched. Teacher configuration problems raise ``TeacherError``.
    """
    started = time.perf_counter()
    manifest, out = Path(manifest), Path(out)
    table = read_table("manifest", manifest)
    root = Path(images) if images is not None else Path(table_metadata(table).get("root", manifest.parent))
    paths = dict(zip(table.column("image_id").to_pylist(), table.column("path").to_pylist(), strict=True))
    if not paths:
        raise TeacherStageError(f"{manifest}: the manifest has no images; run `nucleate ingest` first")

    backend, options = teacher_options(params)
    if backend in ("clip", "conse"):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars; our own progress follows
    teacher = load_teacher(backend, **options)
    log(f"teacher: {teacher.teacher_id}, {len(paths)} images, classes {', '.join(teacher.classes)}")
    store = None
    if cache is not None:
        Path(cache).mkdir(parents=True, exist_ok=True)
        store = ProbsCache(cache, log=log)

    def load(image_id: str):
        return read_image(root / paths[image_id])

    result = score_images(
        teacher, list(paths), load, cache=store, workers=workers,
        progress=_Progress(log, sys.stderr.isatty() if tty is None else tty),
    )
    failed = [(image_id, paths[image_id], reason) for image_id, reason in result.failed]
    for image_id, rel, reason in failed:
        log(f"failed {rel} ({image_id}): {reason}")
    if not result.image_ids:
        raise TeacherStageError(f"none of the {len(paths)} images could be scored (see the lines above); "
                                f"{out} not written")
    if strict and failed:
        raise TeacherStageError(f"--strict: {len(failed)} image(s) could not be scored; {out} not written")
    write_table("teacher_probs", result.table(), out, metadata={
        "templates": list(teacher.templates),
        "backend": teacher.backend,
        "cache_key": teacher.cache_key,
        "failed": [{"image_id": i, "path": p, "reason": r} for i, p, r in failed],
    })
    report = TeacherReport(out, teacher.teacher_id, len(result.image_ids), result.computed, result.from_cache,
                           failed, time.perf_counter() - started)
    log(f"teacher: {report.scored} scored ({report.computed} computed, {report.from_cache} from cache), "
        f"{len(failed)} failed, {report.seconds:.1f} s -> {out}")
    return report


def command(
    manifest: Path = typer.Option(Path("storage/manifest.parquet"), help="Manifest table (from `nucleate ingest`)."),
    out: Path = typer.Option(Path("storage/teacher_probs.parquet"), help="teacher_probs table to write."),
    params: Path = typer.Option(Path("params.yaml"), help="params file (sections `teacher` and `classes`)."),
    images: Path | None = typer.Option(None, help="Image folder; default: the folder stored in the manifest."),
    cache: Path = typer.Option(Path("storage/teacher_cache"), help="Score cache folder (reused across runs)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Compute every image; neither read nor write the cache."),
    strict: bool = typer.Option(False, help="Fail (write nothing) if any image cannot be scored."),
    workers: int = typer.Option(2, min=1, help="Threads decoding images ahead of the model."),
) -> None:
    """Score every manifest image with the teacher (class probabilities) and write the teacher_probs table."""
    try:
        run(manifest, out, load_params(params), images=images, cache=None if no_cache else cache,
            strict=strict, workers=workers)
    except ParamsError as exc:
        for line in exc.problems:
            typer.echo(f"error: {params}: {line}", err=True)
        raise typer.Exit(1) from None
    except (TeacherError, TeacherStageError, FileNotFoundError, ValueError) as exc:
        fail(exc)


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.teacher [--manifest ...] [--out ...]``."""
    run_alone(command, argv)


if __name__ == "__main__":
    main()
