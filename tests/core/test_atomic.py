"""A crash while writing never leaves a half-written artifact or a temp file."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from nucleate.io import atomic_dir, atomic_path, read_table, write_image, write_table
from nucleate.io import tables as tables_module
from nucleate.io.atomic import KeepPrevious


class Boom(RuntimeError):
    pass


def test_exception_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise Boom
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_table_write_failure_mid_write(tmp_path, monkeypatch):
    path = tmp_path / "manifest.parquet"
    good = {"image_id": ["a"], "path": ["a.png"], "width": [1], "height": [1], "channels": [1],
            "dtype": ["uint8"], "split": ["pool"], "bytes": [1]}
    write_table("manifest", good, path)
    before = path.read_bytes()

    real_write = pq.write_table

    def crash_after_writing(table, where, **kwargs):
        real_write(table.slice(0, 0), where, **kwargs)  # something is on disk already
        raise Boom("disk full")

    monkeypatch.setattr(tables_module.pq, "write_table", crash_after_writing)
    with pytest.raises(Boom):
        write_table("manifest", dict(good, image_id=["b"]), path)
    assert path.read_bytes() == before
    assert read_table("manifest", path).column("image_id").to_pylist() == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.parquet"]


def test_image_write_failure_leaves_nothing(tmp_path, monkeypatch):
    from nucleate.io import images

    def crash(*args, **kwargs):
        raise Boom

    monkeypatch.setattr(images.tifffile, "imwrite", crash)
    with pytest.raises(Boom):
        write_image(tmp_path / "a.tif", np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_swaps_a_whole_folder_or_leaves_the_old_one(tmp_path):
    out = tmp_path / "masks"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(Boom), atomic_dir(out) as staging:
        (staging / "new.txt").write_text("half")
        raise Boom
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    with atomic_dir(out) as staging:
        (staging / "new.txt").write_text("new")
        assert not (out / "new.txt").exists()           # nothing shows before the block ends
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    with atomic_dir(out) as staging:                  # the new content is the old one: keep it
        (staging / "other.txt").write_text("x")
        raise KeepPrevious
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks"]  # no staging or old tree left behind
