"""Points -> training masks: Qu et al.'s Voronoi and cluster labels (``from_points``).

``from_points(image, points, method="voronoi_cluster", **options)`` returns a :class:`PseudoMask`
with ``.semantic`` (uint8: 0 background, 1 nucleus, 255 ignore) and ``.instances`` (int32).
"""

from nucleate.pseudomask.points import (
    BACKGROUND,
    IGNORE,
    METHODS,
    NUCLEUS,
    PointError,
    PseudoMask,
    PseudomaskOptions,
    from_points,
)

__all__ = [
    "BACKGROUND",
    "IGNORE",
    "METHODS",
    "NUCLEUS",
    "PointError",
    "PseudoMask",
    "PseudomaskOptions",
    "from_points",
]
