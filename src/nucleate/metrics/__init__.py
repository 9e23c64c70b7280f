"""Pixel and instance metrics for nuclei segmentation: Dice, AJI, object Dice, PQ, detection F1.

Definitions follow docs/methods.md section 5 so numbers compare with the nuclei literature: ``aji``
is Kumar et al.'s AJI (a missed nucleus adds only its own area to the union, which is where Qu et
al.'s ``AJI_fast`` differs; see :func:`aji`), exact IoU ties go to the lowest prediction id; PQ uses
IoU > 0.5 one-to-one matching. Every instance metric is computed from one vectorised overlap table
(:func:`overlap_table`), never a Python loop over instance pairs. Empty cases: both images empty ->
1.0, exactly one empty -> 0.0.
"""

from nucleate.metrics.detection import PointMatch, detection_f1, match_points
from nucleate.metrics.instance import (
    PQResult,
    SegmentationScores,
    aji,
    dice,
    object_dice,
    panoptic_quality,
    segmentation_scores,
)
from nucleate.metrics.overlap import Overlap, overlap_table

__all__ = [
    "Overlap",
    "PQResult",
    "PointMatch",
    "SegmentationScores",
    "aji",
    "detection_f1",
    "dice",
    "match_points",
    "object_dice",
    "overlap_table",
    "panoptic_quality",
    "segmentation_scores",
]
