"""Named pseudo-mask settings: published recipes as :class:`nucleate.config.PseudomaskParams`.

``from_points(image, points, params=PRESETS["qu2019"])`` reproduces the label recipe of Qu et al.'s
``prepare_data.py`` (huiqu18/WeaklySegPointAnno; docs/methods.md section 3.1) at their 40x H&E scale,
r = ``nucleus_radius_px`` = 10 px. Constant by constant (skimage's ``disk(n)`` = the pixels within n px):

=====================================  ===========================  =====================================
Qu et al.                              here                         pixels at r = 10
=====================================  ===========================  =====================================
points dilated by disk(2) -> nucleus   ``point_radius`` 0.2         2 px (13-pixel disk)
distance feature clipped at 20         ``distance_clip`` 2.0        20 px
colour / 10 vs distance (0..20)        ``distance_weight`` 20/25.5  distance range / colour range
background cluster: overlap disk(5)    ``overlap_radius`` 0.5       5 px (81-pixel disk)
remove_small_objects(..., 30)          ``min_area`` 0.3 (x r²)      blobs of >= 30 px kept
per-cell dilation disk(5)              ``dilate`` 0.5               5 px
per-cell erosion disk(7)               ``erode`` 0.7                7 px
no background within disk(10)          ``background_margin`` 1.0    10 px
cells = non-edge pixels + disk(2),     ``refine`` per_cell          each cell closed on its own
  closed independently, union
every nucleus blob >= 30 px kept       ``keep_unclicked`` true      unclicked blobs stay nucleus
k-means on all pixels                  ``sample_pixels`` 10⁹        every pixel of the image
=====================================  ===========================  =====================================

The Voronoi cell boundary is each cell's 1-px inner boundary in both. What is not bit-identical:

* Voronoi cells are the pixels nearest each point (Qu rasterise scipy's Voronoi polygons with
  ``skimage.draw.polygon``): the same except pixels exactly equidistant from two points;
* Qu's label encoding lets a point disk win over a cell boundary (green over red in ``LabelEncoding``);
  here the boundary stays background, except the clicked pixel itself. They differ only where two clicks
  are closer than about 6 px;
* the colour feature is scaled by the 0.5 / 99.5 percentiles instead of /10, which equals Qu's features
  (up to one common factor, so the same k-means problem) for an 8-bit image whose percentiles are 0 and
  255; and k-means is scikit-learn's with ``n_init=3`` and a seed from ``seed``, not ``random_state=0``
  with the ``n_init=10`` of 2019.
"""

from __future__ import annotations

from types import MappingProxyType

from nucleate.config import PseudomaskParams

__all__ = ["PRESETS"]

#: name -> full parameter set (QC gate fields keep the params.yaml defaults)
PRESETS: MappingProxyType[str, PseudomaskParams] = MappingProxyType({
    "qu2019": PseudomaskParams(
        method="voronoi_cluster",
        nucleus_radius_px=10.0,
        point_radius=0.2,
        distance_clip=2.0,
        distance_weight=20 / 25.5,
        overlap_radius=0.5,
        background_margin=1.0,
        dilate=0.5,
        erode=0.7,
        refine="per_cell",
        min_area=0.3,
        keep_unclicked=True,
        sample_pixels=10**9,
    ),
})
