"""``clip`` teacher: zero-shot probabilities from a Hugging Face ``CLIPModel`` + ``CLIPProcessor``.

Text side (prompt ensembling): every class name is put into every template; each prompt's text
embedding is L2-normalised, the T embeddings of a class are averaged and normalised again, giving
one unit vector w_c per class.

Image side: the image is normalised to 8-bit RGB and tiled (:mod:`nucleate.teacher.preprocess`);
each tile goes through the processor's own preprocessing (resize shortest side, centre crop,
CLIP mean/std) and the image tower; tile embeddings are L2-normalised, averaged over the image's
tiles and normalised again (f).

Probabilities: ``softmax(exp(logit_scale) * f . w_c)`` over the classes, i.e. exactly CLIP's
``logits_per_image`` when there is one template and one tile.

Loading never downloads unless ``allow_download=True``: ``model`` is a local directory written by
``save_pretrained`` or a hub id that is already in the local Hugging Face cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nucleate.teacher.base import PixelTeacher, TeacherError, expand_prompts
from nucleate.teacher.preprocess import DEFAULT_PERCENTILES

__all__ = ["DEFAULT_CLIP_MODEL", "ClipTeacher", "load_clip", "weights_fingerprint"]

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
_OFFLINE_ADVICE = "set teacher.model to a local directory or allow downloads (teacher.allow_download: true)"


def weights_fingerprint(module: torch.nn.Module) -> str:
    """Short hex digest of a module's weights: names, shapes, dtypes and the first/last 4096 values
    of every tensor (cheap even for large models; differs between any two trained or random inits)."""
    h = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        for part in (flat[:4096], flat[-4096:]):
            h.update(part.to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()


class ClipTeacher(PixelTeacher):
    """Zero-shot CLIP teacher over an already-loaded model and processor (see :func:`load_clip`)."""

    backend = "clip"
    auto_batch_size = {"cpu": 32, "cuda": 64}

    def __init__(
        self,
        model: Any,
        processor: Any,
        classes: Sequence[str],
        templates: Sequence[str],
        *,
        name: str = "clip",
        device: str = "auto",
        batch_size: int = 0,
        tile: int = 224,
        max_tiles: int = 16,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    ):
        super().__init__(classes, templates, device=device, batch_size=batch_size, tile=tile,
                         max_tiles=max_tiles, percentiles=percentiles)
        self.model = model.eval().to(self.device)
        self.processor = processor
        self.teacher_id = f"clip:{name}@{weights_fingerprint(self.model)}"
        self.logit_scale = float(self.model.logit_scale.detach().exp().cpu())
        self.text_embeddings = self._text_embeddings()  # (C, D) float32, unit rows, CPU

    def _text_embeddings(self) -> torch.Tensor:
        prompts = expand_prompts(self.classes, self.templates)
        max_len = getattr(self.model.config.text_config, "max_position_embeddings", 77)
        tokens = self.processor.tokenizer(prompts, padding=True, truncation=True, max_length=max_len,
                                          return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        with torch.inference_mode():
            feats = self.model.get_text_features(**tokens).pooler_output.float()
        feats = torch.nn.functional.normalize(feats, dim=-1)
        per_class = feats.reshape(len(self.classes), len(self.templates), -1).mean(1)
        return torch.nn.functional.normalize(per_class, dim=-1).cpu()

    def _prepare(self, tiles: list[np.ndarray]) -> torch.Tensor:
        return self.processor.image_processor(images=list(tiles), return_tensors="pt")["pixel_values"]

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        feats = self.model.get_image_features(pixel_values=batch).pooler_output
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    def _probs(self, embeddings: torch.Tensor) -> torch.Tensor:
        image = torch.nn.functional.normalize(embeddings, dim=-1)
        logits = self.logit_scale * image @ self.text_embeddings.T
        return logits.softmax(dim=-1)


def _locate(model: str) -> tuple[str, str]:
    """(source for from_pretrained, short name for the teacher id); raises for a missing directory."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TeacherError(
                f"teacher.model '{model}': directory has no config.json, so it is not a saved model; "
                "write one with CLIPModel.save_pretrained(dir) and CLIPProcessor.save_pretrained(dir)"
            )
        return str(path), path.resolve().name
    if path.exists():
        raise TeacherError(f"teacher.model '{model}' is a file; it must be a model directory or a hub id")
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model
    if looks_like_path:
        raise TeacherError(f"teacher.model '{model}': directory not found; {_OFFLINE_ADVICE}")
    return model, model


def load_clip(
    classes: Sequence[str],
    templates: Sequence[str],
    *,
    model: str | Path | None = None,
    allow_download: bool = False,
    **options: Any,
) -> ClipTeacher:
    """Load a CLIP teacher from ``model`` (local directory or hub id; default
    ``openai/clip-vit-base-patch32``). ``options`` go to :class:`ClipTeacher` (device, batch_size,
    tile, max_tiles, percentiles).

    With ``allow_download=False`` (the default) nothing is fetched: a hub id must already be in the
    local Hugging Face cache. Raises :class:`TeacherError` for a missing directory, a hub id that is
    not available offline, a checkpoint that is not a complete CLIP model, and bad prompts.
    """
    from nucleate.teacher.base import check_prompts

    check_prompts(classes, templates)  # fail on prompts before loading weights
    source, name = _locate(str(model) if model is not None else DEFAULT_CLIP_MODEL)
    from transformers import AutoConfig, CLIPModel, CLIPProcessor

    offline = not allow_download
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as exc:
        where = "is not in the local Hugging Face cache" if offline else "could not be loaded"
        raise TeacherError(
            f"teacher.model '{source}' {where} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            f"{_OFFLINE_ADVICE}"
        ) from None
    if getattr(config, "model_type", None) != "clip":
        raise TeacherError(
            f"teacher.model '{source}' is a '{getattr(config, 'model_type', '?')}' model, not CLIP; the clip "
            "backend needs a CLIPModel checkpoint (e.g. openai/clip-vit-base-patch32, vinid/plip)"
        )
    try:
        clip, info = CLIPModel.from_pretrained(source, local_files_only=offline, output_loading_info=True)
        processor = CLIPProcessor.from_pretrained(source, local_files_only=offline, backend="pil")
    except (OSError, ValueError) as exc:
        raise TeacherError(
            f"teacher.model '{source}': cannot load the CLIP model or its processor/tokenizer "
            f"({type(exc).__name__}: {str(exc).splitlines()[0]}); {_OFFLINE_ADVICE}"
        ) from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise TeacherError(
            f"teacher.model '{source}': checkpoint lacks {len(missing)} weight(s) (e.g. {missing[0]}); "
            "they would be random - use a complete CLIP checkpoint"
        )
    return ClipTeacher(clip, processor, classes, templates, name=name, **options)
