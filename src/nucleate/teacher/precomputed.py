"""``file`` teacher: class probabilities computed elsewhere, read from Parquet or CSV.

Expected layout: a column ``image_id`` (the manifest's content hash) and one numeric column per
class, named exactly as in ``classes`` (any column order; extra columns are an error so a class
list mismatch cannot go unnoticed). Every row must be finite, non-negative and sum to 1 (within
1e-3); image ids must be unique. ``predict_proba`` takes *image ids*, not pixels, and returns the
rows in ``classes`` order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from nucleate.io.images import content_id
from nucleate.io.tables import find_bad_prob_row
from nucleate.teacher.base import Teacher, TeacherError, check_prompts

__all__ = ["FileTeacher", "load_file"]


class FileTeacher(Teacher):
    """Probabilities looked up by image id from a validated table."""

    backend = "file"
    needs_pixels = False

    def __init__(self, path: str | Path, classes: Sequence[str], templates: Sequence[str] = ("{}",)):
        self.classes, self.templates = check_prompts(classes, templates)
        self.path = Path(path)
        table = _read(self.path)
        ids, probs = _validate(table, self.classes, str(self.path))
        self._row = {image_id: i for i, image_id in enumerate(ids)}
        self._probs = probs
        self.teacher_id = f"file:{self.path.name}@{content_id(self.path)[:12]}"
        self.options = {}
        self.model_calls = 0

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._row

    def predict_proba(self, images: Sequence[str]) -> np.ndarray:
        """Rows ``(N, C)`` for the image ids ``images``; raises ``KeyError`` naming missing ids."""
        missing = [i for i in images if i not in self._row]
        if missing:
            raise KeyError(f"{self.path}: no row for image_id {missing[0]!r}"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        return self._probs[[self._row[i] for i in images]]


def _read(path: Path) -> pa.Table:
    if not path.is_file():
        raise TeacherError(f"teacher.model '{path}': probabilities file not found (file backend expects a "
                           "Parquet or CSV file with image_id + one column per class)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pq.read_table(path)
        if suffix == ".csv":
            return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
                column_types={"image_id": pa.string()}))
    except (pa.ArrowInvalid, OSError) as exc:
        raise TeacherError(f"{path}: not a readable {suffix[1:].upper()} file ({exc})") from None
    raise TeacherError(f"{path}: unsupported file type '{suffix}'; use .parquet or .csv")


def _validate(table: pa.Table, classes: tuple[str, ...], source: str) -> tuple[list[str], np.ndarray]:
    columns = table.column_names
    if "image_id" not in columns:
        raise TeacherError(f"{source}: no 'image_id' column; columns present: {', '.join(columns) or 'none'}")
    missing = [c for c in classes if c not in columns]
    if missing:
        raise TeacherError(f"{source}: no column for class(es) {', '.join(missing)}; the file needs image_id "
                           f"plus one column per class in teacher.classes; columns present: {', '.join(columns)}")
    extra = [c for c in columns if c != "image_id" and c not in classes]
    if extra:
        raise TeacherError(f"{source}: column(s) {', '.join(extra)} are not in teacher.classes "
                           f"({', '.join(classes)}); add them to teacher.classes or drop them from the file")
    ids_col = table.column("image_id")
    if ids_col.null_count:
        row = ids_col.to_pylist().index(None)
        raise TeacherError(f"{source}: image_id is empty at row {row}")
    ids = [str(v) for v in ids_col.to_pylist()]
    seen: dict[str, int] = {}
    for row, image_id in enumerate(ids):
        if image_id in seen:
            raise TeacherError(f"{source}: image_id {image_id!r} repeats (rows {seen[image_id]} and {row})")
        seen[image_id] = row
    probs = np.empty((len(ids), len(classes)), np.float32)  # the values the teacher_probs table will hold
    for j, name in enumerate(classes):
        col = table.column(name)
        if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
            raise TeacherError(f"{source}: column '{name}' has type {col.type}; probabilities must be numbers")
        probs[:, j] = col.to_numpy(zero_copy_only=False).astype(np.float32) if len(col) else []
    bad = find_bad_prob_row(probs)
    if bad is not None:
        raise TeacherError(f"{source}: row {bad.row} (image_id {ids[bad.row]}) "
                           f"{dict(zip(classes, probs[bad.row].tolist(), strict=True))}: {bad.describe(classes)}")
    return ids, probs


def load_file(classes: Sequence[str], templates: Sequence[str] = ("{}",), *, path: str | Path | None = None,
              model: str | Path | None = None) -> FileTeacher:
    """Build a :class:`FileTeacher` from ``path`` (``model`` is accepted as an alias, as in params)."""
    source = path if path is not None else model
    if source is None:
        raise TeacherError("the file teacher needs a path: set teacher.model to the Parquet/CSV file")
    return FileTeacher(source, classes, templates)
