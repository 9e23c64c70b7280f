"""Score cache: teacher probabilities already computed, keyed by (image_id, teacher cache key).

One Parquet file per cache key, ``<directory>/<cache_key>.parquet``, in the ``teacher_probs``
schema (metadata: classes, teacher_id, templates). The cache key digests the teacher id, the class
list (and its order), the templates and every preprocessing option, so a changed setting never
reuses stale rows; a grown pool only computes the images that are new. Files are replaced
atomically; an unreadable cache file is reported and treated as empty (it is a cache, never a source
of truth).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from nucleate.io import TableError, probs_array, probs_table, read_table, table_metadata, write_table

__all__ = ["ProbsCache"]


class ProbsCache:
    """A folder of per-key probability tables (see the module docstring)."""

    def __init__(self, directory: str | Path, log: Callable[[str], None] | None = None):
        self.directory = Path(directory)
        self._log = log or (lambda line: None)

    def path(self, key: str) -> Path:
        """File that holds the rows of cache key ``key``."""
        return self.directory / f"{key}.parquet"

    def load(self, key: str, classes: Sequence[str]) -> dict[str, np.ndarray]:
        """image_id -> probability row (C,) float32 for ``key``; empty when absent or unusable."""
        path = self.path(key)
        if not path.exists():
            return {}
        try:
            table = read_table("teacher_probs", path)
        except (TableError, OSError) as exc:
            self._log(f"cache: ignoring unreadable {path} ({exc})")
            return {}
        if table_metadata(table).get("classes") != list(classes):
            self._log(f"cache: ignoring {path}: its class list differs")
            return {}
        probs = probs_array(table)
        return dict(zip(table.column("image_id").to_pylist(), probs, strict=True))

    def save(
        self,
        key: str,
        rows: Mapping[str, np.ndarray],
        *,
        classes: Sequence[str],
        teacher_id: str,
        templates: Sequence[str] = (),
    ) -> Path:
        """Write all ``rows`` (image_id -> (C,) probabilities) for ``key`` atomically; returns the path."""
        ids = list(rows)
        probs = np.stack([rows[i] for i in ids]) if ids else np.zeros((0, len(classes)), np.float32)
        table = probs_table(ids, probs, classes=list(classes), teacher_id=teacher_id)
        path = self.path(key)
        write_table("teacher_probs", table, path, metadata={"templates": list(templates), "cache_key": key})
        return path
