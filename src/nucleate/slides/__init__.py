"""Whole-slide images (issue 13, item 1): open a slide, find its tissue once, tile it lazily.

Coordinates follow DESIGN.md's points convention everywhere: float64 ``x`` = column, ``y`` = row, origin at
the top-left *corner* of the top-left pixel; "level-0 px" are pixels of the slide's full-resolution level.

* :func:`open_slide` -> :class:`Slide` (levels, downsamples, level-0 µm/px, region reads), :class:`SlideError`;
  tiffslide reads SVS / pyramidal TIFF, OpenSlide (the ``openslide`` extra) the vendor formats tiffslide cannot
* :func:`tissue_mask` -> :class:`TissueMask` (computed once per slide from a low-resolution thumbnail)
* :func:`tile_grid` -> list of :class:`Tile` (kept by tissue fraction), :func:`tile_to_slide` / :func:`slide_to_tile`
* :func:`read_tile` -> the tile's pixels at the target resolution, read lazily from the best level
* :func:`stitch_tile` -> :class:`TileNuclei`: the nuclei a tile owns in its overlapping prediction window
* :func:`read_pool_image` -> a manifest row's pixels, plain image or tile (the one way stages read pool items)
* :func:`slide_points` -> a points table with ``slide_id, slide_x, slide_y`` (level-0 px) for points on tiles
* :mod:`nucleate.slides.sample`: the real CC0 Aperio slide that ``make setup`` installs (tests, benchmarks)
"""

from nucleate.slides.coords import slide_points, slide_to_tile, tile_to_slide
from nucleate.slides.grid import Tile, core_box, tile_grid
from nucleate.slides.pool import PoolRows, is_tile_row, pool_tile, read_pool_image
from nucleate.slides.read import read_tile, read_window
from nucleate.slides.reader import SLIDE_SUFFIXES, Slide, SlideError, is_slide_file, open_slide
from nucleate.slides.stitch import TileNuclei, instance_outlines, stitch_tile
from nucleate.slides.tissue import TissueMask, tissue_mask

__all__ = [
    "PoolRows",
    "SLIDE_SUFFIXES",
    "Slide",
    "SlideError",
    "Tile",
    "TileNuclei",
    "TissueMask",
    "core_box",
    "is_slide_file",
    "instance_outlines",
    "is_tile_row",
    "open_slide",
    "pool_tile",
    "read_pool_image",
    "read_tile",
    "read_window",
    "slide_points",
    "slide_to_tile",
    "stitch_tile",
    "tile_grid",
    "tile_to_slide",
    "tissue_mask",
]
