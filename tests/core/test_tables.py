"""Schema round trips and schema violations for every table kind."""

from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nucleate.io import (
    SCHEMAS,
    TableError,
    empty_table,
    probs_array,
    probs_table,
    read_table,
    table_metadata,
    tables,
    write_table,
)
from nucleate.io.tables import PROB_SUM_TOLERANCE, features_array, find_bad_prob_row

NOW = datetime(2026, 11, 27, tzinfo=UTC)

ROWS = {
    "manifest": {
        "image_id": ["a" * 32, "b" * 32], "path": ["x/1.png", "2.tif"], "width": [10, 20], "height": [5, 6],
        "channels": [1, 3], "dtype": ["uint8", "uint16"], "split": ["pool", "gold"], "bytes": [100, 200],
    },
    "inflight": {"image_id": ["a", "b"], "round": [2, 3], "task_id": [17, None]},
    "student_features": {"image_id": ["a", "b"], "features": [[0.5, -1.0, 2.0], [0.0, 0.0, 1.0]]},
    "selection": {
        "round": [1, 1], "rank": [0, 1], "image_id": ["a", "b"], "strategy": ["pcoreset"] * 2,
        "min_distance": [0.5, None],
    },
    "points": {
        "image_id": ["a", "a"], "x": [0.5, 10.25], "y": [3.0, 4.75], "label": ["nucleus"] * 2,
        "annotator": ["ann@lab"] * 2, "task_id": [1, None], "annotation_id": [7, None], "round": [1, 1],
        "origin": ["manual", "prediction"], "created_at": [NOW, NOW],
    },
    "predicted_points": {
        "image_id": ["a"], "x": [0.5], "y": [3.0], "label": ["nucleus"], "annotator": ["model"], "task_id": [None],
        "annotation_id": [None], "round": [2], "origin": ["prediction"], "created_at": [NOW], "score": [0.75],
    },
    "pseudomask_index": {
        "image_id": ["a"], "semantic_path": ["a.semantic.png"], "instances_path": ["a.instances.tif"],
        "voronoi_path": ["voronoi/a.png"], "cluster_path": ["cluster/a.png"],
        "method": ["voronoi_cluster"], "n_points": [3], "n_instances": [3],
    },
}


@pytest.mark.parametrize("kind", sorted(ROWS))
def test_round_trip(kind, tmp_path):
    path = tmp_path / f"{kind}.parquet"
    written = write_table(kind, ROWS[kind], path, metadata={"round": 1})
    back = read_table(kind, path)
    assert back.schema.remove_metadata() == SCHEMAS[kind].remove_metadata() == written.schema.remove_metadata()
    assert back.to_pylist() == written.to_pylist()
    assert table_metadata(back)["round"] == 1


def test_teacher_probs_round_trip(tmp_path):
    probs = np.array([[0.2, 0.8], [1.0, 0.0]], np.float32)
    path = tmp_path / "probs.parquet"
    write_table("teacher_probs", probs_table(["a", "b"], probs, classes=["nuc", "bg"], teacher_id="t1"), path)
    back = read_table("teacher_probs", path)
    np.testing.assert_array_equal(probs_array(back), probs)
    assert table_metadata(back) == {"classes": ["nuc", "bg"], "teacher_id": "t1"}


def test_empty_tables_validate(tmp_path):
    for kind in SCHEMAS:
        write_table(kind, empty_table(kind), tmp_path / f"{kind}.parquet")
        assert read_table(kind, tmp_path / f"{kind}.parquet").num_rows == 0


def _write_raw(tmp_path, data):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table(data), path)
    return path


def test_missing_column_is_named(tmp_path):
    data = dict(ROWS["points"])
    del data["origin"]
    path = _write_raw(tmp_path, data)
    with pytest.raises(TableError, match=r"bad.parquet: points table is missing column 'origin'"):
        read_table("points", path)


def test_wrong_type_is_named(tmp_path):
    data = dict(ROWS["points"], x=["left", "right"])
    with pytest.raises(TableError, match=r"column 'x' has type string, expected double"):
        read_table("points", _write_raw(tmp_path, data))


def test_safe_cast_accepted(tmp_path):
    data = dict(ROWS["points"], round=pa.array([1, 1], pa.int64()))
    assert read_table("points", _write_raw(tmp_path, data)).schema.field("round").type == pa.int32()


def test_null_in_required_column_names_row(tmp_path):
    data = dict(ROWS["manifest"], path=["x.png", None])
    with pytest.raises(TableError, match=r"column 'path' is empty \(null\) at row 1"):
        read_table("manifest", _write_raw(tmp_path, data))


def test_bad_enum_value_names_row(tmp_path):
    data = dict(ROWS["manifest"], split=["pool", "training"])
    with pytest.raises(TableError, match=r"column 'split' row 1 is 'training'; allowed: pool, gold, test"):
        read_table("manifest", _write_raw(tmp_path, data))


def test_duplicate_image_id_rejected(tmp_path):
    data = dict(ROWS["manifest"], image_id=["a", "a"])
    with pytest.raises(TableError, match=r"column 'image_id' repeats 'a' \(rows 0 and 1\)"):
        read_table("manifest", _write_raw(tmp_path, data))


def test_nan_point_rejected(tmp_path):
    with pytest.raises(TableError, match=r"column 'y' row 1 is nan"):
        write_table("points", dict(ROWS["points"], y=[1.0, float("nan")]), tmp_path / "p.parquet")
    assert not list(tmp_path.iterdir())


def test_predicted_points_need_a_score_in_0_1_and_read_as_points(tmp_path):
    with pytest.raises(TableError, match=r"column 'score' row 0 is 1.5; must be in \[0, 1\]"):
        write_table("predicted_points", dict(ROWS["predicted_points"], score=[1.5]), tmp_path / "p.parquet")
    with pytest.raises(TableError, match=r"missing column 'score'"):
        write_table("predicted_points", ROWS["points"], tmp_path / "p.parquet")
    write_table("predicted_points", ROWS["predicted_points"], tmp_path / "p.parquet")
    assert read_table("points", tmp_path / "p.parquet").column("score").to_pylist() == [0.75]


def test_probs_not_summing_to_one_rejected(tmp_path):
    table = probs_table(["a", "b"], np.array([[0.5, 0.5], [0.5, 0.6]], np.float32), classes=["n", "b"],
                        teacher_id="t")
    with pytest.raises(TableError, match=r"probs row 1 \(image_id b\).*sums to 1.1"):
        write_table("teacher_probs", table, tmp_path / "p.parquet")


def test_probs_wrong_length_rejected(tmp_path):
    table = pa.table({"image_id": ["a"], "probs": [[0.5, 0.25, 0.25]]}).replace_schema_metadata(
        {b"nucleate.classes": b'["n", "b"]'}
    )
    with pytest.raises(TableError, match=r"probs row 0 has 3 values, expected 2"):
        write_table("teacher_probs", table, tmp_path / "p.parquet")


def test_not_parquet_is_clear(tmp_path):
    path = tmp_path / "manifest.parquet"
    path.write_text("image_id,path\n")
    with pytest.raises(TableError, match="not a readable Parquet file"):
        read_table("manifest", path)


def test_missing_file_and_unknown_kind(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest table not found"):
        read_table("manifest", tmp_path / "nope.parquet")
    with pytest.raises(ValueError, match="unknown table kind 'manfest'"):
        read_table("manfest", tmp_path / "nope.parquet")


# ------------------------------------------------------------------ the one probability-row rule

# float32-exact rows on either side of 1 ± PROB_SUM_TOLERANCE (1e-3): 1 + 1/1024 and 1 + 17/16384
JUST_INSIDE = [0.5, 0.5009765625]  # sums to 1.0009765625
JUST_OUTSIDE = [0.5, 0.50103759765625]  # sums to 1.00103759765625


def test_find_bad_prob_row_names_the_first_bad_row_and_why():
    assert PROB_SUM_TOLERANCE == 1e-3
    good = np.array([[0.25, 0.75], JUST_INSIDE, [1.0 - 0.0009765625, 0.0]])
    assert find_bad_prob_row(good) is None
    bad = find_bad_prob_row(np.array([[0.5, 0.5], JUST_OUTSIDE, [np.nan, 1.0]]))
    assert (bad.row, bad.problem, bad.column) == (1, "sum", None) and bad.value == 1.00103759765625
    assert bad.describe().startswith("sums to 1.001038; each row must sum to 1 (±0.001)")
    bad = find_bad_prob_row(np.array([[0.5, 0.5], [1.5, -0.5], [np.nan, 1.0]]))
    assert (bad.row, bad.problem, bad.column, bad.value) == (1, "negative", 1, -0.5)
    assert bad.describe(["n", "bg"]) == "class 1 (bg) is -0.5; probabilities must be >= 0"
    bad = find_bad_prob_row(np.array([[0.5, 0.5], [1.0, np.inf]]))
    assert (bad.row, bad.problem, bad.column) == (1, "non-finite", 1)
    assert bad.describe() == "class 1 is inf; probabilities must be finite"


def test_find_bad_prob_row_across_chunks(monkeypatch):
    monkeypatch.setattr(tables, "_PROB_CHUNK_ROWS", 4)
    probs = np.full((11, 2), 0.5)
    assert find_bad_prob_row(probs) is None
    probs[9] = [0.5, 0.6]
    probs[10] = [np.nan, 0.5]
    assert find_bad_prob_row(probs).row == 9


@pytest.mark.parametrize("caller", ["teacher_probs table", "student_probs table", "select()", "file teacher"])
def test_one_tolerance_for_every_probability_reader(caller, tmp_path):
    """The same rows are accepted / rejected by the tables, selection and the file teacher."""
    from nucleate.selection import select
    from nucleate.teacher import load_teacher

    def check(row):
        probs = np.array([[0.25, 0.75], row], np.float32)
        if caller.endswith("table"):
            table = probs_table(["a", "b"], probs, classes=["n", "bg"], teacher_id="t")
            write_table(caller.split()[0], table, tmp_path / "p.parquet")
        elif caller == "select()":
            select("pcoreset", probs, budget=1)
        else:
            path = tmp_path / "p.csv"
            path.write_text("image_id,n,bg\na,0.25,0.75\nb," + ",".join(repr(float(v)) for v in row) + "\n")
            load_teacher("file", classes=["n", "bg"], model=str(path))

    check(JUST_INSIDE)
    with pytest.raises(ValueError, match=r"row 1\b.*sums to 1\.001038; each row must sum to 1 \(±0\.001\)"):
        check(JUST_OUTSIDE)


def test_student_probs_is_the_teacher_probs_schema(tmp_path):
    assert SCHEMAS["student_probs"] == SCHEMAS["teacher_probs"]
    table = probs_table(["a", "a"], np.array([[0.5, 0.5]] * 2, np.float32), classes=["n", "b"], teacher_id="s")
    with pytest.raises(TableError, match=r"s\.parquet: column 'image_id' repeats 'a' \(rows 0 and 1\)"):
        write_table("student_probs", table, tmp_path / "s.parquet")


# ------------------------------------------------------------------ in-flight and student features tables


@pytest.mark.parametrize(("columns", "pattern"), [
    ({"id": ["a"], "round": [1], "task_id": [1]},
     r"inflight\.parquet: inflight table is missing column 'image_id' \(string\)"),
    ({"image_id": ["a", None], "round": [1, 1], "task_id": [1, 2]},
     r"inflight\.parquet: column 'image_id' is empty \(null\) at row 1"),
    ({"image_id": ["a", "b", "c"], "round": [1, None, 2], "task_id": [1, 2, 3]},
     r"column 'round' is empty \(null\) at row 1"),
    ({"image_id": ["a"], "round": [1.5], "task_id": [1]}, r"column 'round' has type double, expected int32"),
    ({"image_id": ["a"], "round": [1], "task_id": ["t"]}, r"column 'task_id' has type string, expected int64"),
])
def test_bad_inflight_tables_name_file_column_and_row(tmp_path, columns, pattern):
    path = tmp_path / "inflight.parquet"
    pq.write_table(pa.table(columns), path)
    with pytest.raises(TableError, match=pattern):
        read_table("inflight", path)


def test_inflight_task_id_is_optional_in_value_but_not_as_a_column(tmp_path):
    path = tmp_path / "inflight.parquet"
    write_table("inflight", {"image_id": ["a"], "round": [1], "task_id": [None]}, path)
    assert read_table("inflight", path).column("task_id").to_pylist() == [None]
    pq.write_table(pa.table({"image_id": ["a"], "round": [1]}), path)
    with pytest.raises(TableError, match="missing column 'task_id'"):
        read_table("inflight", path)


@pytest.mark.parametrize(("features", "ids", "pattern"), [
    ([[1.0, 2.0], [1.0]], ["a", "b"], r"f\.parquet: column 'features' row 1 \(image_id b\) has 1 values, row 0 has 2"),
    ([[], []], ["a", "b"], r"column 'features' row 0 \(image_id a\) has no values"),
    ([[1.0, 2.0], [1.0, float("nan")]], ["a", "b"], r"row 1 \(image_id b\) value 1 is nan; features must be finite"),
    ([[1.0], [2.0]], ["a", "a"], r"column 'image_id' repeats 'a' \(rows 0 and 1\)"),
    ([[1.0], None], ["a", "b"], r"column 'features' is empty \(null\) at row 1"),
])
def test_bad_student_features_name_file_column_and_row(tmp_path, features, ids, pattern):
    path = tmp_path / "f.parquet"
    pq.write_table(pa.table({"image_id": ids, "features": pa.array(features, pa.list_(pa.float64()))}), path)
    with pytest.raises(TableError, match=pattern):
        read_table("student_features", path)


def test_features_array_is_float32_rows(tmp_path):
    path = tmp_path / "f.parquet"
    write_table("student_features", ROWS["student_features"], path)
    array = features_array(read_table("student_features", path))
    assert array.dtype == np.float32 and array.tolist() == [[0.5, -1.0, 2.0], [0.0, 0.0, 1.0]]
    assert features_array(empty_table("student_features")).shape == (0, 0)
