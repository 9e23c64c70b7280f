"""Score a pool: cached, chunked teacher inference with per-image error reporting.

:func:`score_images` is what the ``teacher`` stage runs. It takes image ids and a ``load`` function
(image_id -> pixel array), so file IO stays at the stage edge. Images are decoded by a small thread
pool one chunk ahead of the model; a chunk of ``chunk`` images goes to ``teacher.predict_proba``
(which batches their tiles). An image that cannot be loaded or preprocessed is reported with its
reason and left out; the others are scored. Rows already in the cache are reused, new rows are added
to it (also when the run is interrupted, so a rerun resumes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from nucleate.io import probs_table
from nucleate.teacher.base import Teacher
from nucleate.teacher.cache import ProbsCache

__all__ = ["ChunkRunner", "ScoreResult", "score_chunk", "score_images"]

Loader = Callable[[str], Any]
#: ``run(chunks) -> (chunk, rows, failed)`` per chunk, in any order: scores the chunks elsewhere
#: (e.g. on a Dask cluster, each with :func:`score_chunk`); rows map image_id -> (C,) float32 probabilities
ChunkRunner = Callable[[list[list[str]]], Iterable[tuple[list[str], dict[str, np.ndarray], list[tuple[str, str]]]]]


@dataclass
class ScoreResult:
    """Outcome of :func:`score_images`: rows in input order (failed images left out)."""

    image_ids: list[str]
    probs: np.ndarray  # (N, C) float32
    classes: tuple[str, ...]
    teacher_id: str
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image_id, reason)
    computed: int = 0
    from_cache: int = 0

    def table(self) -> pa.Table:
        """The ``teacher_probs`` table (classes and teacher id in the schema metadata)."""
        return probs_table(self.image_ids, self.probs, classes=list(self.classes), teacher_id=self.teacher_id)


def _safe_load(load: Loader, image_id: str) -> tuple[Any, str | None]:
    try:
        return load(image_id), None
    except (OSError, ValueError) as exc:  # ImageError is a ValueError; missing files are OSError
        return None, str(exc) or type(exc).__name__


def _predict_chunk(teacher: Teacher, ids: list[str], arrays: list[Any]) -> tuple[dict, list[tuple[str, str]]]:
    """Rows for one chunk; when the chunk fails as a whole, retry image by image to isolate failures."""
    try:
        probs = teacher.predict_proba(arrays)
        return dict(zip(ids, probs, strict=True)), []
    except (ValueError, KeyError):
        if len(ids) == 1:
            raise
    rows, failed = {}, []
    for image_id, array in zip(ids, arrays, strict=True):
        try:
            rows[image_id] = teacher.predict_proba([array])[0]
        except (ValueError, KeyError) as exc:
            reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            failed.append((image_id, str(reason) or type(exc).__name__))
    return rows, failed


def score_chunk(teacher: Teacher, ids: list[str], load: Loader | None = None) -> tuple[dict, list[tuple[str, str]]]:
    """(rows, failed) of one chunk, loading its images one by one (``load`` None: a teacher that scores ids).

    The same rows as :func:`score_images` computes in-process for that chunk (same batch of images)."""
    if not teacher.needs_pixels:
        return _predict_chunk(teacher, ids, ids)
    if load is None:
        raise TypeError(f"the {teacher.backend} teacher scores pixels: pass load(image_id) -> array")
    ok_ids, arrays, failed = [], [], []
    for image_id in ids:
        array, reason = _safe_load(load, image_id)
        if reason is None:
            ok_ids.append(image_id)
            arrays.append(array)
        else:
            failed.append((image_id, reason))
    if not ok_ids:
        return {}, failed
    rows, bad = _predict_chunk(teacher, ok_ids, arrays)
    return rows, failed + bad


def score_images(
    teacher: Teacher,
    image_ids: Iterable[str],
    load: Loader | None = None,
    *,
    cache: ProbsCache | None = None,
    chunk: int = 64,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    run_chunks: ChunkRunner | None = None,
) -> ScoreResult:
    """Probabilities for every image id (duplicates scored once, first-occurrence order).

    ``load(image_id)`` returns an ``(H, W)`` / ``(H, W, 3)`` array (``OSError`` / ``ValueError`` for
    a bad image); it is not needed for teachers that score ids (``file``). ``progress(done, total)``
    is called after every chunk, counting images that need computing (cache hits excluded).
    ``run_chunks`` scores the chunks of ``chunk`` images elsewhere (see :data:`ChunkRunner`) instead of here;
    the chunks, hence the rows, are the same. ``failed`` is in input order.
    """
    ids = list(dict.fromkeys(image_ids))
    classes = tuple(teacher.classes)
    rows: dict[str, np.ndarray] = {}
    failed: list[tuple[str, str]] = []
    cached: dict[str, np.ndarray] = {}
    use_cache = cache is not None and teacher.needs_pixels
    if use_cache:
        cached = cache.load(teacher.cache_key, classes)
    todo = [i for i in ids if i not in cached]
    total, done, computed = len(todo), 0, 0
    if progress:
        progress(0, total)

    def flush() -> None:
        if use_cache and computed:
            cache.save(teacher.cache_key, {**cached, **rows}, classes=classes, teacher_id=teacher.teacher_id,
                       templates=teacher.templates)

    try:
        if run_chunks is not None:
            chunks = [todo[s : s + max(1, chunk)] for s in range(0, total, max(1, chunk))]
            for part, got, bad in run_chunks(chunks):
                rows.update(got)
                failed.extend(bad)
                if teacher.needs_pixels:
                    computed += len(got)
                done += len(part)
                if progress:
                    progress(done, total)
        elif not teacher.needs_pixels:
            for start in range(0, total, max(1, chunk)):
                part = todo[start : start + chunk]
                got, bad = _predict_chunk(teacher, part, part)
                rows.update(got)
                failed.extend(bad)
                done += len(part)
                if progress:
                    progress(done, total)
        else:
            if load is None:
                raise TypeError(f"the {teacher.backend} teacher scores pixels: pass load(image_id) -> array")
            chunks = [todo[s : s + max(1, chunk)] for s in range(0, total, max(1, chunk))]
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                pending: list[Future] | None = None
                for k, part in enumerate(chunks):
                    if pending is None:
                        pending = [pool.submit(_safe_load, load, i) for i in part]
                    results = [f.result() for f in pending]
                    pending = ([pool.submit(_safe_load, load, i) for i in chunks[k + 1]]
                               if k + 1 < len(chunks) else None)
                    ok_ids, arrays = [], []
                    for image_id, (array, reason) in zip(part, results, strict=True):
                        if reason is None:
                            ok_ids.append(image_id)
                            arrays.append(array)
                        else:
                            failed.append((image_id, reason))
                    if ok_ids:
                        got, bad = _predict_chunk(teacher, ok_ids, arrays)
                        rows.update(got)
                        failed.extend(bad)
                        computed += len(got)
                    done += len(part)
                    if progress:
                        progress(done, total)
    finally:
        flush()

    position = {image_id: k for k, image_id in enumerate(ids)}
    failed.sort(key=lambda f: position.get(f[0], len(ids)))
    out_ids = [i for i in ids if i in rows or i in cached]
    probs = (np.stack([rows[i] if i in rows else cached[i] for i in out_ids]).astype(np.float32)
             if out_ids else np.zeros((0, len(classes)), np.float32))
    return ScoreResult(out_ids, probs, classes, teacher.teacher_id, failed, computed,
                       from_cache=sum(1 for i in ids if i in cached))
