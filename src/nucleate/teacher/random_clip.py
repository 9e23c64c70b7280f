"""Randomly initialised CLIP models (model + processor + tokenizer) built offline.

No real CLIP weights install from a package registry, so tests and benchmarks exercise the real
``clip`` loading path with random weights: :func:`save_random_clip` writes a directory that
:func:`nucleate.teacher.clip.load_clip` (and ``CLIPModel.from_pretrained``) reads back.

* ``tiny`` — 2-layer, 64-wide towers, 64 px input, patch 8 (about 0.2 M parameters);
* ``vit-b-32`` — the ViT-B/32 shape (224 px input, patch 32, 12 x 768 vision layers, 12 x 512 text
  layers; about 151 M parameters), for speed measurements.

The tokenizer is a real ``CLIPTokenizer`` (byte-level BPE, CLIP's pre-tokenisation and special
tokens) with the 512 byte symbols as its vocabulary and no merges; the image processor is CLIP's
(resize shortest side, centre crop, OpenAI mean/std).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["SIZES", "build_random_clip", "save_random_clip"]

SIZES = ("tiny", "vit-b-32")


def _tokenizer() -> Any:
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(vocab)}, merges=[])


def build_random_clip(size: str = "tiny") -> tuple[Any, Any]:
    """(``CLIPModel``, ``CLIPProcessor``) with transformers' random initialisation (not seeded: two
    builds differ; save one with :func:`save_random_clip` to reuse it)."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    tok = _tokenizer()
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if size == "tiny":
        image = 64
        config = CLIPConfig(
            text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=77, **ids),
            vision_config=dict(image_size=image, patch_size=8, hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4),
            projection_dim=32,
        )
    else:
        image = 224
        config = CLIPConfig(text_config=dict(vocab_size=49408, **ids),
                            vision_config=dict(image_size=image, patch_size=32), projection_dim=512)
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": image},
                                              crop_size={"height": image, "width": image}),
        tokenizer=tok,
    )
    return model, processor


def save_random_clip(directory: str | Path, size: str = "tiny") -> Path:
    """Write a random CLIP (``save_pretrained`` layout) to ``directory``; returns it."""
    directory = Path(directory)
    model, processor = build_random_clip(size)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
