"""Microscopy pixels -> the 8-bit RGB tiles that ImageNet / CLIP image towers expect.

Both pixel teachers (``clip``, ``conse``) see an image through two steps:

1. :func:`to_rgb8` — intensities to ``uint8`` RGB by the project's one contrast stretch,
   :func:`nucleate.io.images.percentile_stretch` (``uint8`` RGB unchanged; everything else clipped to the
   ``[low, high]`` percentiles of the image, ``teacher.percentile_low`` / ``percentile_high``, and rescaled
   to 0..255; its docstring gives the edge rules), with single-channel results repeated into R = G = B.

2. :func:`tile_boxes` — where the model looks. An image no larger than ``tile`` on both sides is one
   tile (the model's own preprocessing then resizes its shortest side and centre-crops, as CLIP does).
   A larger image is covered by a regular grid of square, overlapping ``side`` x ``side`` tiles at the
   image's native resolution (``side = tile``, usually the model's input size, so nothing is squashed).
   When that grid would exceed ``max_tiles`` tiles, ``side`` grows until it fits and each tile is
   resized down by the model's preprocessing. A tile never exceeds the image's shorter side; for very
   elongated images that still need more than ``max_tiles`` tiles, tiles are spread evenly along the
   long axis (leaving gaps). ``tile = 0`` turns tiling off: the whole image is one tile.

Arrays are indexed (row, col) = (y, x); boxes are ``(y0, x0, height, width)`` in pixels.
"""

from __future__ import annotations

import math

import numpy as np

from nucleate.io.images import percentile_stretch

__all__ = ["DEFAULT_PERCENTILES", "to_rgb8", "tile_boxes", "image_tiles"]

DEFAULT_PERCENTILES = (0.5, 99.8)


def to_rgb8(image: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """Return ``image`` (``(H, W)`` or ``(H, W, 3)``, any real dtype) as ``(H, W, 3)`` ``uint8`` RGB.

    :func:`nucleate.io.images.percentile_stretch` with ``percentiles``, gray repeated into RGB. Raises
    ``ValueError`` for other shapes, empty images or bad ``percentiles`` (need ``0 <= low < high <= 100``).
    """
    image = np.asarray(image)
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
        raise ValueError(f"expected an (H, W) gray or (H, W, 3) RGB image, got shape {image.shape}")
    out = percentile_stretch(image, percentiles)
    return np.repeat(out[:, :, None], 3, axis=2) if out.ndim == 2 else out


def tile_boxes(height: int, width: int, tile: int, max_tiles: int) -> list[tuple[int, int, int, int]]:
    """Tile boxes ``(y0, x0, h, w)`` (pixels) covering a ``height`` x ``width`` image, row-major.

    ``tile`` is the preferred square tile side in pixels (0 = no tiling); at most ``max_tiles``
    boxes are returned. See the module docstring for the rule.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    if tile < 0 or max_tiles < 1:
        raise ValueError(f"need tile >= 0 and max_tiles >= 1, got tile={tile}, max_tiles={max_tiles}")
    if tile == 0 or (height <= tile and width <= tile):
        return [(0, 0, height, width)]
    short = min(height, width)
    side = min(tile, short)
    while side < short and math.ceil(height / side) * math.ceil(width / side) > max_tiles:
        side = min(short, max(side + 1, int(side * 1.05)))
    ny, nx = math.ceil(height / side), math.ceil(width / side)
    if ny * nx > max_tiles:  # elongated image: side == short, one axis has a single tile
        if ny > nx:
            ny = max(1, max_tiles // nx)
        else:
            nx = max(1, max_tiles // ny)
    ys = np.rint(np.linspace(0, height - side, ny)).astype(int)
    xs = np.rint(np.linspace(0, width - side, nx)).astype(int)
    return [(int(y), int(x), side, side) for y in ys for x in xs]


def image_tiles(
    rgb: np.ndarray, tile: int, max_tiles: int
) -> list[np.ndarray]:
    """The tiles of an ``(H, W, 3)`` ``uint8`` image as views, in :func:`tile_boxes` order."""
    boxes = tile_boxes(rgb.shape[0], rgb.shape[1], tile, max_tiles)
    return [rgb[y : y + h, x : x + w] for y, x, h, w in boxes]
