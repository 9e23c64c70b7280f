"""Point annotations: pixel conventions, conversions and agreement (pure; no Label Studio client here)."""

from nucleate.annotations.points import centroids_xy

__all__ = ["centroids_xy"]
