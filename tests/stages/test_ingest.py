"""Ingest a folder with good, corrupt, truncated, duplicate, 16-bit and RGB images."""

import shutil

import numpy as np
import pytest
import tifffile

from nucleate.io import content_id, read_table, table_metadata, write_image
from tasks import ingest

RNG = np.random.default_rng(1)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    write_image(root / "a_gray8.png", RNG.integers(0, 256, (30, 40), dtype=np.uint8))
    write_image(root / "b_gray16.tif", RNG.integers(0, 65536, (50, 20), dtype=np.uint16))
    write_image(root / "nested" / "deeper" / "c_rgb.png", RNG.integers(0, 256, (16, 24, 3), dtype=np.uint8))
    write_image(root / "d_rgb16.tiff", RNG.integers(0, 65536, (10, 12, 3), dtype=np.uint16))
    write_image(root / "e.jpg", RNG.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    shutil.copyfile(root / "a_gray8.png", root / "nested" / "dup_of_a.png")
    (root / "empty.png").write_bytes(b"")
    (root / "corrupt.tif").write_bytes(b"II*\x00garbage that is not a tiff")
    data = (root / "b_gray16.tif").read_bytes()
    (root / "truncated.tif").write_bytes(data[: len(data) // 2])
    tifffile.imwrite(root / "stack.tif", np.zeros((3, 8, 8, 2), np.uint8))
    (root / "notes.txt").write_text("not an image: ignored, not reported")
    (root / ".hidden.png").write_bytes(b"ignored")
    return root


def test_ingest_reports_each_bad_file_once_and_keeps_the_rest(folder, tmp_path, line_log):
    report = ingest.run(folder=folder, manifest=tmp_path / "manifest.parquet", log=line_log)
    lines = line_log.lines
    table = read_table("manifest", tmp_path / "manifest.parquet")
    rows = {r["path"]: r for r in table.to_pylist()}
    assert sorted(rows) == ["a_gray8.png", "b_gray16.tif", "d_rgb16.tiff", "e.jpg", "nested/deeper/c_rgb.png"]
    assert (rows["b_gray16.tif"]["width"], rows["b_gray16.tif"]["height"]) == (20, 50)
    assert (rows["b_gray16.tif"]["channels"], rows["b_gray16.tif"]["dtype"]) == (1, "uint16")
    assert (rows["nested/deeper/c_rgb.png"]["channels"], rows["d_rgb16.tiff"]["dtype"]) == (3, "uint16")
    assert rows["a_gray8.png"]["image_id"] == content_id(folder / "a_gray8.png")
    assert {r["split"] for r in rows.values()} == {"pool"}
    assert table_metadata(table)["root"] == str(folder)

    skipped = dict(report.skipped)
    assert sorted(skipped) == ["corrupt.tif", "empty.png", "nested/dup_of_a.png", "stack.tif", "truncated.tif"]
    assert skipped["nested/dup_of_a.png"] == "duplicate of a_gray8.png (same content)"
    assert "empty" in skipped["empty.png"] and "truncated" in skipped["truncated.tif"]
    assert "multi-page" in skipped["stack.tif"]
    skip_lines = [line for line in lines if line.startswith("skipped ")]
    assert len(skip_lines) == 5 and all(line.count("\n") == 0 for line in skip_lines)
    assert report.added == 5 and report.missing == []


def test_reingest_is_identical_and_appends_new_images(folder, tmp_path):
    manifest = tmp_path / "manifest.parquet"
    ingest.run(folder=folder, manifest=manifest)
    first = read_table("manifest", manifest)
    again = ingest.run(folder=folder, manifest=manifest)
    assert again.added == 0 and again.unchanged == 5
    assert read_table("manifest", manifest).equals(first)

    write_image(folder / "0_new_first_by_name.png", RNG.integers(0, 256, (8, 9), dtype=np.uint8))
    third = ingest.run(folder=folder, manifest=manifest)
    grown = read_table("manifest", manifest)
    assert third.added == 1
    assert grown.slice(0, 5).equals(first)  # old rows keep their order
    assert grown.column("path")[5].as_py() == "0_new_first_by_name.png"


def test_strict_fails_and_writes_nothing(folder, tmp_path):
    manifest = tmp_path / "manifest.parquet"
    with pytest.raises(ingest.IngestError, match=r"--strict: 5 file\(s\) skipped"):
        ingest.run(folder=folder, manifest=manifest, strict=True)
    assert not manifest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_missing_file_reported_and_row_kept(folder, tmp_path, line_log):
    manifest = tmp_path / "manifest.parquet"
    ingest.run(folder=folder, manifest=manifest)
    (folder / "e.jpg").unlink()
    report = ingest.run(folder=folder, manifest=manifest, log=line_log)
    lines = line_log.lines
    assert report.missing == ["e.jpg"]
    assert any(line.startswith("missing e.jpg:") for line in lines)
    assert "e.jpg" in read_table("manifest", manifest).column("path").to_pylist()


def test_changed_content_at_same_path_is_not_silently_replaced(folder, tmp_path):
    manifest = tmp_path / "manifest.parquet"
    ingest.run(folder=folder, manifest=manifest)
    old_id = content_id(folder / "e.jpg")
    write_image(folder / "e.jpg", RNG.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    report = ingest.run(folder=folder, manifest=manifest)
    assert dict(report.skipped)["e.jpg"].startswith(f"content changed since it was ingested as {old_id}")
    rows = read_table("manifest", manifest).to_pylist()
    assert [r["image_id"] for r in rows if r["path"] == "e.jpg"] == [old_id]


def test_split_from_top_level_folder_and_explicit(tmp_path):
    root = tmp_path / "imgs"
    for i, split in enumerate(("pool", "gold", "test", "other")):
        write_image(root / split / f"{i}.png", np.full((4, 4), i, np.uint8))
    write_image(root / "gold.png", np.full((4, 4), 9, np.uint8))  # a file, not a folder
    ingest.run(folder=root, manifest=tmp_path / "m.parquet")
    splits = {r["path"]: r["split"] for r in read_table("manifest", tmp_path / "m.parquet").to_pylist()}
    assert splits == {"gold.png": "pool", "gold/1.png": "gold", "other/3.png": "pool", "pool/0.png": "pool",
                      "test/2.png": "test"}
    ingest.run(folder=root, manifest=tmp_path / "m2.parquet", split="test")
    assert set(read_table("manifest", tmp_path / "m2.parquet").column("split").to_pylist()) == {"test"}


def test_manifest_of_another_folder_is_refused(folder, tmp_path):
    manifest = tmp_path / "manifest.parquet"
    ingest.run(folder=folder, manifest=manifest)
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ingest.IngestError, match="built from folder"):
        ingest.run(folder=other, manifest=manifest)


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        ingest.run(folder=tmp_path / "nope", manifest=tmp_path / "m.parquet")
    with pytest.raises(ValueError, match="split must be auto or one of"):
        ingest.run(folder=tmp_path, manifest=tmp_path / "m.parquet", split="train")


def test_many_files_stream_in_batches(tmp_path):
    """More files than one decode batch: order, ids and count stay right."""
    root = tmp_path / "many"
    n = ingest._BATCH + 37
    for i in range(n):
        write_image(root / f"{i:05d}.png", np.full((3, 3), i % 256, np.uint8) + np.eye(3, dtype=np.uint8) * (i // 256))
    report = ingest.run(folder=root, manifest=tmp_path / "m.parquet")
    table = read_table("manifest", tmp_path / "m.parquet")
    assert report.added == n == table.num_rows
    assert table.column("path").to_pylist() == sorted(table.column("path").to_pylist())
