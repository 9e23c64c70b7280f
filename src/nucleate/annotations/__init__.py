"""Point annotations: pixel conventions, points tables, conversions and agreement (pure; no Label Studio
client here)."""

from nucleate.annotations.agreement import agreement, consensus_points, consensus_table, match_points
from nucleate.annotations.display import display_uint8
from nucleate.annotations.effort import RoundEffort, round_effort
from nucleate.annotations.labelstudio import (
    collect_points,
    keypoint_points,
    keypoint_results,
    labeling_config,
    prediction_points,
    task_finished,
)
from nucleate.annotations.points import centroids_xy, group_rows, points_table, points_xy, rows_by_image

__all__ = [
    "RoundEffort",
    "agreement",
    "centroids_xy",
    "collect_points",
    "consensus_points",
    "consensus_table",
    "display_uint8",
    "group_rows",
    "keypoint_points",
    "keypoint_results",
    "labeling_config",
    "match_points",
    "points_table",
    "points_xy",
    "prediction_points",
    "round_effort",
    "rows_by_image",
    "task_finished",
]
