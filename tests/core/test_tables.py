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
    write_table,
)

NOW = datetime(2026, 11, 27, tzinfo=UTC)

ROWS = {
    "manifest": {
        "image_id": ["a" * 32, "b" * 32], "path": ["x/1.png", "2.tif"], "width": [10, 20], "height": [5, 6],
        "channels": [1, 3], "dtype": ["uint8", "uint16"], "split": ["pool", "gold"], "bytes": [100, 200],
    },
    "selection": {
        "round": [1, 1], "rank": [0, 1], "image_id": ["a", "b"], "strategy": ["pcoreset"] * 2,
        "min_distance": [0.5, None],
    },
    "points": {
        "image_id": ["a", "a"], "x": [0.5, 10.25], "y": [3.0, 4.75], "label": ["nucleus"] * 2,
        "annotator": ["ann@lab"] * 2, "task_id": [1, None], "annotation_id": [7, None], "round": [1, 1],
        "origin": ["manual", "prediction"], "created_at": [NOW, NOW],
    },
    "pseudomask_index": {
        "image_id": ["a"], "semantic_path": ["a.semantic.png"], "instances_path": ["a.instances.tif"],
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
