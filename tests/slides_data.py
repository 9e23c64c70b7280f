"""A generated whole-slide image of a known pattern, shared by the slide tests (tests/core/test_slides.py, the
stage tests): a tiled pyramidal TIFF with tissue rectangles and a position code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from nucleate.config import SlidesParams

MPP = 0.5  # level-0 µm per px of the generated slide
W, H = 2048, 1536  # level-0 size, px
DOWNSAMPLES = (2, 4, 8)  # levels 1-3, subsampled (the pattern is constant on 8 x 8 blocks); tifffile wants one factor
# tissue rectangles, level-0 px (x0, y0, x1, y1); all on the 8 px grid, i.e. whole pixels of the 4 µm/px mask
A = (256, 256, 1024, 768)  # 3 x 2 whole tiles of 256 level-0 px (128 px at 1 µm/px)
B = (1280, 768, 1792, 1280)  # 2 x 2 whole tiles
C = (8, 1280, 136, 1528)  # half (0.484) of tile (0, 5)
D = (1536, 8, 1792, 48)  # 0.156 of tile (6, 0): below the threshold
SPECK = (1200, 100, 1224, 124)  # 144 µm² of "tissue": dust, removed
HOLE = (512, 512, 528, 528)  # 64 µm² hole in A: filled
PARAMS = SlidesParams(target_mpp=1.0, tile_px=128, tissue_threshold=0.25, thumbnail_mpp=4.0,
                      min_object_um2=1000.0, min_hole_um2=1000.0)  # fmt: skip


def pattern() -> np.ndarray:
    """uint8 RGB (H, W, 3): white background; tissue R = 200, G = 40 + (x // 8) % 64, B = 120 + (y // 8) % 64."""
    y, x = np.mgrid[0:H, 0:W]
    image = np.full((H, W, 3), 255, np.uint8)
    tissue = np.zeros((H, W), bool)
    for x0, y0, x1, y1 in (A, B, C, D, SPECK):
        tissue[y0:y1, x0:x1] = True
    x0, y0, x1, y1 = HOLE
    tissue[y0:y1, x0:x1] = False
    image[tissue, 0] = 200
    image[tissue, 1] = (40 + (x // 8) % 64)[tissue]
    image[tissue, 2] = (120 + (y // 8) % 64)[tissue]
    return image


def write_slide(path: Path, image: np.ndarray, mpp: float | None, subifds: bool = True) -> Path:
    """A tiled pyramidal TIFF, levels in SubIFDs (else top-level reduced pages), resolution tags in pixels per
    centimetre (when ``mpp``)."""
    opts = {"tile": (256, 256), "photometric": "rgb" if image.ndim == 3 else "minisblack", "compression": "zlib"}

    def res(d: int) -> dict:
        return {} if mpp is None else {"resolution": (1e4 / (mpp * d),) * 2, "resolutionunit": "CENTIMETER"}

    with tifffile.TiffWriter(path) as tw:
        tw.write(image, subifds=len(DOWNSAMPLES) if subifds else None, **opts, **res(1))
        for d in DOWNSAMPLES:
            tw.write(image[::d, ::d], subfiletype=1, **opts, **res(d))
    return path
