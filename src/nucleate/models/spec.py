"""The student network's architecture as a small JSON-serialisable record (:class:`ModelSpec`).

A spec holds everything needed to rebuild the network's modules on any device, without the
ImageNet weight file: a saved model is ``spec + state_dict`` (:mod:`nucleate.models.persist`).
``SPEC_VERSION`` is bumped whenever the meaning of a field or the module layout changes, so an
old file fails with one clear line instead of a shape error deep inside ``load_state_dict``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["ENCODERS", "HEATMAP_DECODERS", "SPEC_VERSION", "ModelError", "ModelSpec"]

#: version of the spec fields and of the module layout they produce (the state_dict keys and shapes)
SPEC_VERSION = 1

#: ``resnet``: residual encoder trained from scratch; ``efficientnet-lite0``: ImageNet-pretrainable
ENCODERS = ("resnet", "efficientnet-lite0")

#: ``separate``: the heat-map has its own light decoder branch; ``shared``: a 1x1 head on the seg decoder
HEATMAP_DECODERS = ("separate", "shared")


class ModelError(ValueError):
    """A network cannot be built, saved or loaded; the one-line message names the file or setting."""


def _positive_ints(name: str, value: Any, length: int) -> tuple[int, ...]:
    try:
        items = tuple(value)
    except TypeError:
        raise ModelError(f"model.{name} must be a list of {length} positive integers, got {value!r}") from None
    if len(items) != length or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
        raise ModelError(f"model.{name} must be a list of {length} positive integers, got {list(items)!r}")
    return items


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of :class:`nucleate.models.StudentNet` (see that class for the data flow).

    * ``encoder`` — one of :data:`ENCODERS`.
    * ``num_classes`` — C, the image-level head's outputs (the teacher's class count).
    * ``pretrained`` — whether the encoder started from ImageNet weights (provenance only: loading a
      saved model never needs the weight file). Only ``efficientnet-lite0`` has such weights.
    * ``width``, ``depths`` — residual encoder only: stage k (k = 1..4, stride 2**(k+1)) has
      ``width * 2**(k-1)`` channels and ``depths[k-1]`` basic blocks. The stem has ``width`` channels.
    * ``decoder_channels`` — segmentation decoder output channels at strides 16, 8, 4, 2, 1.
    * ``heatmap_decoder`` — one of :data:`HEATMAP_DECODERS`.
    * ``heatmap_channels`` — the separate heat-map decoder's channels at strides 16, 8, 4, 2, 1.
    * ``drop_connect`` — efficientnet-lite0 only: stochastic-depth rate of its MBConv blocks
      (scaled linearly with block index, as in the reference implementation; 0 disables it).
    """

    encoder: str = "resnet"
    num_classes: int = 2
    pretrained: bool = False
    width: int = 32
    depths: tuple[int, ...] = (2, 2, 2, 2)
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 16)
    heatmap_decoder: str = "separate"
    heatmap_channels: tuple[int, ...] = (64, 32, 16, 16, 8)
    drop_connect: float = 0.2

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ModelError(f"model.encoder must be one of {', '.join(ENCODERS)}; got {self.encoder!r}")
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 1:
            raise ModelError(f"model.num_classes must be a positive integer, got {self.num_classes!r}")
        if not isinstance(self.pretrained, bool):
            raise ModelError(f"model.pretrained must be true or false, got {self.pretrained!r}")
        if self.pretrained and self.encoder != "efficientnet-lite0":
            raise ModelError(f"model.pretrained: no ImageNet weights exist for the {self.encoder!r} encoder; "
                             "set pretrained to false or encoder to efficientnet-lite0")
        if not isinstance(self.width, int) or isinstance(self.width, bool) or self.width < 1:
            raise ModelError(f"model.width must be a positive integer, got {self.width!r}")
        object.__setattr__(self, "depths", _positive_ints("depths", self.depths, 4))
        object.__setattr__(self, "decoder_channels", _positive_ints("decoder_channels", self.decoder_channels, 5))
        object.__setattr__(self, "heatmap_channels", _positive_ints("heatmap_channels", self.heatmap_channels, 5))
        if self.heatmap_decoder not in HEATMAP_DECODERS:
            raise ModelError(f"model.heatmap_decoder must be one of {', '.join(HEATMAP_DECODERS)}; "
                             f"got {self.heatmap_decoder!r}")
        if not isinstance(self.drop_connect, int | float) or not 0.0 <= float(self.drop_connect) < 1.0:
            raise ModelError(f"model.drop_connect must be in [0, 1), got {self.drop_connect!r}")
        object.__setattr__(self, "drop_connect", float(self.drop_connect))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists); :meth:`from_dict` inverts it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Rebuild a spec; unknown or missing fields raise :class:`ModelError` (never silently dropped)."""
        if not isinstance(data, dict):
            raise ModelError(f"a model spec must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        missing = sorted(names - set(data))
        if unknown or missing:
            raise ModelError(f"model spec fields do not match this nucleate (unknown: {unknown or 'none'}, "
                             f"missing: {missing or 'none'})")
        return cls(**data)
