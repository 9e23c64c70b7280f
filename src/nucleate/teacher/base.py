"""What every teacher shares: prompt checks and batched tile inference (device rule: :mod:`nucleate.device`).

A *teacher* maps images to class probabilities. Public surface (all backends):

* ``classes`` — tuple of C class names, the column order of every probability row;
* ``templates`` — prompt templates (``"{}"`` marks the class name);
* ``teacher_id`` — short string naming the model and its weights (goes into ``teacher_probs``
  metadata);
* ``cache_key`` — hex digest of everything that changes the output (teacher id, classes,
  templates, preprocessing options); the score cache is keyed by (image_id, cache_key);
* ``predict_proba(images) -> np.ndarray`` of shape (N, C), float32, rows sum to 1;
* ``model_calls`` — number of forward passes of the image model so far.

:class:`PixelTeacher` implements ``predict_proba`` for backends that look at pixels: every image is
normalised and tiled (:mod:`nucleate.teacher.preprocess`), all tiles of the call run through the
image tower in batches of ``batch_size`` tiles (fp16 autocast on CUDA), tile embeddings are averaged
per image, and the backend turns the mean embedding into probabilities.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from nucleate.device import resolve_device
from nucleate.teacher.preprocess import DEFAULT_PERCENTILES, image_tiles, to_rgb8

__all__ = ["TeacherError", "Teacher", "PixelTeacher", "check_prompts", "expand_prompts"]


class TeacherError(ValueError):
    """A teacher cannot be built or used; the message names the setting and how to fix it."""


def check_prompts(classes: Sequence[str], templates: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Validate class names and prompt templates; return them as tuples.

    Rules: at least two distinct, non-blank class names; at least one template; each template holds
    exactly one ``{}`` and no other braces. Raises :class:`TeacherError` naming the offending entry.
    """
    if isinstance(classes, str) or isinstance(templates, str):
        raise TeacherError("teacher.classes and teacher.templates must be lists of strings, not a single string")
    classes = tuple(classes)
    templates = tuple(templates)
    if not classes:
        raise TeacherError("teacher.classes: the class list is empty; list at least two class names under "
                           "teacher.classes in params.yaml (e.g. [nucleus, background])")
    for i, name in enumerate(classes):
        if not isinstance(name, str) or not name.strip():
            raise TeacherError(f"teacher.classes[{i}]: class names must be non-blank strings, got {name!r}")
    if len(classes) < 2:
        raise TeacherError(f"teacher.classes: only one class ({classes[0]!r}); a teacher needs at least two to "
                           "tell apart - add e.g. 'background'")
    if len(set(classes)) != len(classes):
        dup = next(c for c in classes if classes.count(c) > 1)
        raise TeacherError(f"teacher.classes: {dup!r} is listed twice; class names must be unique")
    if not templates:
        raise TeacherError("teacher.templates is empty; add at least one, e.g. 'a microscopy image of {}.'")
    for i, template in enumerate(templates):
        if not isinstance(template, str):
            raise TeacherError(f"teacher.templates[{i}]: expected a string, got {template!r}")
        n = template.count("{}")
        if n != 1:
            what = "has no '{}' placeholder" if n == 0 else f"has {n} '{{}}' placeholders"
            raise TeacherError(
                f"teacher.templates[{i}] {template!r} {what}; each template needs exactly one '{{}}' "
                "where the class name goes, e.g. 'a fluorescence microscopy image of {}.'"
            )
        if template.replace("{}", "").count("{") or template.replace("{}", "").count("}"):
            raise TeacherError(
                f"teacher.templates[{i}] {template!r} has stray braces; only one '{{}}' is allowed"
            )
    return classes, templates


def expand_prompts(classes: Sequence[str], templates: Sequence[str]) -> list[str]:
    """All prompts, class-major: ``[t.format(c) for c in classes for t in templates]``.

    Underscores in class names become spaces (``"tumor_cell"`` -> ``"tumor cell"``).
    """
    return [t.replace("{}", c.replace("_", " ")) for c in classes for t in templates]


def digest(payload: Any, size: int = 16) -> str:
    """Hex BLAKE2b digest (``size`` bytes) of a JSON-serialisable ``payload`` (sorted keys)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=size).hexdigest()


class Teacher:
    """Base class: subclasses set ``backend``, ``classes``, ``templates``, ``teacher_id``, ``options``."""

    backend: str = ""
    needs_pixels: bool = True
    classes: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    teacher_id: str = ""
    options: dict[str, Any] = {}
    model_calls: int = 0

    @property
    def cache_key(self) -> str:
        """Digest of (teacher_id, classes, templates, output-changing options)."""
        return digest({"teacher_id": self.teacher_id, "classes": list(self.classes),
                       "templates": list(self.templates), "options": self.options})

    def predict_proba(self, images: Sequence[Any]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(teacher_id={self.teacher_id!r}, classes={list(self.classes)})"


class PixelTeacher(Teacher):
    """Shared tile pipeline; subclasses implement :meth:`_prepare`, :meth:`_embed`, :meth:`_probs`.

    ``batch_size`` is tiles per forward pass; 0 picks ``auto_batch_size[device type]`` (measured in
    ``benchmarks/bench_teacher.py``: on CPU EfficientNet-Lite0 is fastest at 1-4 tiles per pass,
    ViT-B/32 at 32).
    """

    auto_batch_size: dict[str, int] = {"cpu": 16, "cuda": 64}

    def __init__(
        self,
        classes: Sequence[str],
        templates: Sequence[str],
        *,
        device: str = "auto",
        batch_size: int = 0,
        tile: int = 224,
        max_tiles: int = 16,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    ):
        self.classes, self.templates = check_prompts(classes, templates)
        if batch_size < 0:
            raise TeacherError(f"teacher.batch_size must be >= 0 (0 = auto), got {batch_size}")
        if tile < 0 or max_tiles < 1:
            raise TeacherError(f"need teacher.tile >= 0 and teacher.max_tiles >= 1, got {tile} and {max_tiles}")
        low, high = (float(p) for p in percentiles)
        if not 0.0 <= low < high <= 100.0:
            raise TeacherError(f"teacher percentiles must satisfy 0 <= low < high <= 100, got ({low}, {high})")
        self.device = resolve_device(device, setting="teacher.device")
        self.batch_size = int(batch_size) or self.auto_batch_size[self.device.type]
        self.tile = int(tile)
        self.max_tiles = int(max_tiles)
        self.percentiles = (low, high)
        self.model_calls = 0

    @property
    def options(self) -> dict[str, Any]:  # type: ignore[override]
        # "stretch": version of the intensity rule, part of the cache key; 2 = nucleate.io.images.percentile_stretch
        # (near-constant images fall back to min/max instead of turning black)
        return {"tile": self.tile, "max_tiles": self.max_tiles, "percentiles": list(self.percentiles), "stretch": 2}

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def embed_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Mean tile embedding per image, ``(N, D)`` float32 on the CPU."""
        tiles: list[np.ndarray] = []
        owner: list[int] = []
        for i, image in enumerate(images):
            rgb = to_rgb8(image, self.percentiles)
            for t in image_tiles(rgb, self.tile, self.max_tiles):
                tiles.append(t)
                owner.append(i)
        if not tiles:
            raise TeacherError("predict_proba got no images")
        chunks = []
        for start in range(0, len(tiles), self.batch_size):
            batch = self._prepare(tiles[start : start + self.batch_size]).to(self.device)
            with torch.inference_mode(), self._autocast():
                out = self._embed(batch)
            self.model_calls += 1
            chunks.append(out.float().cpu())
        feats = torch.cat(chunks)
        index = torch.tensor(owner)
        sums = torch.zeros(len(images), feats.shape[1], dtype=torch.float32).index_add_(0, index, feats)
        counts = torch.bincount(index, minlength=len(images)).clamp(min=1).to(torch.float32)
        return sums / counts[:, None]

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities ``(N, C)`` float32 for ``images`` (each ``(H, W)`` or ``(H, W, 3)``)."""
        if len(images) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        with torch.inference_mode():
            probs = self._probs(self.embed_images(images))
        return probs.numpy().astype(np.float32, copy=False)

    # -- backend hooks -------------------------------------------------------------------------
    def _prepare(self, tiles: list[np.ndarray]) -> torch.Tensor:  # pragma: no cover - abstract
        """``uint8`` RGB tiles -> model input batch ``(B, 3, S, S)``."""
        raise NotImplementedError

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Model input batch -> per-tile embeddings ``(B, D)``."""
        raise NotImplementedError

    def _probs(self, embeddings: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Mean tile embeddings ``(N, D)`` float32 CPU -> probabilities ``(N, C)``."""
        raise NotImplementedError
