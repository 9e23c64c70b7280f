"""Point annotations: pixel conventions, conversions and agreement (pure; no Label Studio client here)."""

from nucleate.annotations.agreement import agreement, consensus_points, consensus_table, match_points
from nucleate.annotations.display import display_uint8
from nucleate.annotations.labelstudio import collect_points, keypoint_points, keypoint_results, labeling_config
from nucleate.annotations.points import centroids_xy

__all__ = [
    "agreement",
    "centroids_xy",
    "collect_points",
    "consensus_points",
    "consensus_table",
    "display_uint8",
    "keypoint_points",
    "keypoint_results",
    "labeling_config",
    "match_points",
]
