"""nucleate.annotations.points: the one points-table builder and the one group-by-image helper (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from nucleate.annotations.points import (
    UNKNOWN_TIME,
    centroids_xy,
    group_rows,
    points_table,
    points_xy,
    rows_by_image,
)
from nucleate.io import SCHEMAS, TableError


def test_points_table_broadcasts_single_values_fills_optional_columns_and_keeps_extras():
    t = points_table({"image_id": ["b", "a", "b"], "x": np.array([1.5, 2.0, 3.0]), "y": [4.0, 5.0, 6.5],
                      "label": "nucleus", "annotator": "student", "round": 2, "origin": "prediction",
                      "score": [0.9, 0.8, 0.7]})
    assert t.schema.names == [*SCHEMAS["points"].names, "score"]
    assert t.schema.field("round").type == pa.int32() and t.schema.field("x").type == pa.float64()
    rows = t.to_pylist()
    assert [(r["image_id"], r["x"], r["y"], r["label"], r["round"]) for r in rows] == [
        ("b", 1.5, 4.0, "nucleus", 2), ("a", 2.0, 5.0, "nucleus", 2), ("b", 3.0, 6.5, "nucleus", 2)]
    assert {(r["task_id"], r["annotation_id"], r["created_at"]) for r in rows} == {(None, None, UNKNOWN_TIME)}
    assert [r["score"] for r in rows] == [0.9, 0.8, 0.7]


def test_points_table_with_no_points_is_a_valid_empty_table():
    t = points_table({"image_id": [], "x": [], "y": [], "label": "nucleus", "annotator": "a", "round": 0,
                      "origin": "manual"})
    assert t.num_rows == 0 and t.schema.names == SCHEMAS["points"].names


def test_points_table_names_the_bad_column_and_row():
    base = {"image_id": ["a", "a"], "x": [1.0, 2.0], "y": [1.0, 2.0], "label": "nucleus", "annotator": "a",
            "round": 1, "created_at": datetime(2025, 1, 1, tzinfo=UTC)}
    with pytest.raises(TableError, match=r"src: column 'origin' row 1 is 'guess'"):
        points_table({**base, "origin": ["manual", "guess"]}, source="src")
    with pytest.raises(TableError, match=r"column 'x' row 0 is nan"):
        points_table({**base, "x": [float("nan"), 1.0], "origin": "manual"})
    with pytest.raises(ValueError, match="column 'y' has 1 values, expected 2"):
        points_table({**base, "y": [1.0], "origin": "manual"})


def test_rows_by_image_groups_rows_in_order_and_points_xy_matches():
    t = points_table({"image_id": ["c", "a", "c", "b", "a"], "x": [0.0, 1.0, 2.0, 3.0, 4.0],
                      "y": [10.0, 11.0, 12.0, 13.0, 14.0], "label": "n", "annotator": "a", "round": 1,
                      "origin": "manual"})
    groups = rows_by_image(t)
    assert list(groups) == ["a", "b", "c"]
    assert {k: v.tolist() for k, v in groups.items()} == {"a": [1, 4], "b": [3], "c": [0, 2]}
    assert all(v.dtype == np.int64 for v in groups.values())
    assert points_xy(t)[groups["c"]].tolist() == [[0.0, 10.0], [2.0, 12.0]]
    assert rows_by_image(t.slice(0, 0)) == {} and points_xy(t.slice(0, 0)).shape == (0, 2)
    assert {k: v.tolist() for k, v in group_rows(np.array([3, 1, 3])).items()} == {1: [1], 3: [0, 2]}


def test_centroid_convention_on_a_known_square():
    labels = np.zeros((6, 8), np.int32)
    labels[1:3, 4:6] = 7  # rows 1-2, cols 4-5: pixel centres at x 4.5..5.5, y 1.5..2.5
    ids, xy = centroids_xy(labels)
    assert ids.tolist() == [7]
    np.testing.assert_allclose(xy, [[5.0, 2.0]])
