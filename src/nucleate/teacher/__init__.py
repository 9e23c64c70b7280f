"""Vision-language teachers: images -> class probabilities (the space selection covers).

``load_teacher(backend, **options)`` returns an object with ``classes``, ``teacher_id``,
``cache_key`` and ``predict_proba(images) -> np.ndarray`` (N, C) float32, rows summing to 1.

Backends and their options (``classes`` and ``templates`` are common to all):

* ``conse`` (offline default) — :mod:`nucleate.teacher.conse`: ``top_t``, ``temperature``,
  ``device``, ``batch_size``, ``tile``, ``max_tiles``, ``percentiles``.
* ``clip`` — :mod:`nucleate.teacher.clip`: ``model`` (local directory or hub id),
  ``allow_download`` and the pixel options above except ``top_t``/``temperature``.
* ``file`` — :mod:`nucleate.teacher.precomputed`: ``path`` (or ``model``) of a Parquet/CSV file;
  ``predict_proba`` takes image ids.

Heavy libraries (transformers, the weight packages) are imported only when a teacher is loaded.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from nucleate.teacher.base import PixelTeacher, Teacher, TeacherError, check_prompts, expand_prompts
from nucleate.teacher.cache import ProbsCache
from nucleate.teacher.preprocess import tile_boxes, to_rgb8
from nucleate.teacher.score import ScoreResult, score_images

__all__ = [
    "BACKENDS",
    "PixelTeacher",
    "ProbsCache",
    "ScoreResult",
    "Teacher",
    "TeacherError",
    "backend_options",
    "check_prompts",
    "expand_prompts",
    "load_teacher",
    "score_images",
    "tile_boxes",
    "to_rgb8",
]

BACKENDS = ("conse", "clip", "file")


def _loader(backend: str):
    if backend == "conse":
        from nucleate.teacher.conse import ConseTeacher

        return ConseTeacher.__init__
    if backend == "clip":
        from nucleate.teacher.clip import load_clip

        return load_clip
    if backend == "file":
        from nucleate.teacher.precomputed import load_file

        return load_file
    raise TeacherError(f"teacher.backend must be one of {', '.join(BACKENDS)}; got {backend!r}")


def backend_options(backend: str) -> tuple[str, ...]:
    """Keyword options ``load_teacher`` accepts for ``backend`` (besides classes and templates)."""
    params = inspect.signature(_loader(backend)).parameters
    skip = {"self", "classes", "templates", "options"}
    names = [n for n, p in params.items() if n not in skip and p.kind is not p.VAR_KEYWORD]
    if backend == "clip":
        from nucleate.teacher.clip import ClipTeacher

        sig = inspect.signature(ClipTeacher.__init__).parameters
        names += [n for n in sig if n not in skip | {"model", "processor", "name"} and n not in names]
    return tuple(names)


def load_teacher(
    backend: str,
    *,
    classes: Sequence[str],
    templates: Sequence[str] = ("a microscopy image of {}.",),
    **options: Any,
) -> Teacher:
    """Build the ``backend`` teacher for ``classes`` (column order of its probabilities).

    Raises :class:`TeacherError` for an unknown backend, bad prompts, missing weights or files, and
    ``TypeError`` for an option the backend does not take (listing the ones it does).
    """
    allowed = backend_options(backend)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"teacher backend {backend!r} does not take option(s) {', '.join(unknown)}; "
                        f"it takes: {', '.join(allowed)}")
    check_prompts(classes, templates)
    if backend == "conse":
        from nucleate.teacher.conse import load_conse

        return load_conse(classes, templates, **options)
    return _loader(backend)(classes, templates, **options)
