"""Points -> training masks: Qu et al.'s Voronoi and cluster labels (``from_points``).

``from_points(image, points)`` uses the params.yaml settings (``nucleate.config.PseudomaskParams()``);
``from_points(image, points, method="voronoi_cluster", **options)`` changes single fields and
``from_points(image, points, params=PRESETS["qu2019"])`` runs Qu et al.'s own constants. The result is a
:class:`PseudoMask` with ``.voronoi`` and ``.cluster`` (the two labels Qu et al. train on), ``.semantic``
(the method's map; uint8: 0 background, 1 nucleus, 255 ignore) and ``.instances`` (int32).
"""

from nucleate.pseudomask.points import (
    BACKGROUND,
    IGNORE,
    METHODS,
    NUCLEUS,
    PointError,
    PseudoMask,
    from_points,
    resolve_params,
)
from nucleate.pseudomask.presets import PRESETS

__all__ = [
    "BACKGROUND",
    "IGNORE",
    "METHODS",
    "NUCLEUS",
    "PRESETS",
    "PointError",
    "PseudoMask",
    "from_points",
    "resolve_params",
]
