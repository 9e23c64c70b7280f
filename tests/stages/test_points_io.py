"""``nucleate points export | import --format qupath`` on a manifest of plain images and whole-slide tiles."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from typer.testing import CliRunner

from nucleate.annotations.points import points_table
from nucleate.io import read_table, write_table
from nucleate.slides import tile_to_slide
from tasks.points_io import app
from tests.core.test_annotations_formats import SLIDE, slide_points, slide_tiles

OTHER = "o" * 64  # a second slide's content id


def _manifest(path, tiles):
    base = {"channels": 3, "dtype": "uint8", "split": "pool", "bytes": 1}
    paths = {SLIDE: "slides/case1.ome.tif", OTHER: "more/case2.svs"}
    rows = [{**base, "image_id": i, "path": paths[t.slide_id], "width": t.tile_px, "height": t.tile_px,
             **t.manifest_columns()} for i, t in tiles.items()]
    rows.append({**base, "image_id": "p" * 32, "path": "imgs/plain.png", "width": 50, "height": 40,
                 **dict.fromkeys(next(iter(tiles.values())).manifest_columns())})
    write_table("manifest", pa.Table.from_pylist(rows), path)


def _points(tiles):
    """slide_points on SLIDE, one point on OTHER, two on the plain image (null slide columns)."""
    on_slide = slide_points({i: t for i, t in tiles.items() if t.slide_id == SLIDE})
    other = next(i for i, t in tiles.items() if t.slide_id == OTHER)
    extra = points_table({
        "image_id": [other, "p" * 32, "p" * 32], "x": [32.0, 0.5, 49.5], "y": [1.0, 0.5, 39.0],
        "label": ["micronucleus", "nucleus", "micronucleus"], "annotator": "ann3", "round": 1, "origin": "manual",
        "created_at": [datetime(2025, 1, 1, 0, 0, s, tzinfo=UTC) for s in range(3)],
        "slide_id": [OTHER, None, None], "slide_x": [None] * 3, "slide_y": [None] * 3})
    return pa.concat_tables([on_slide, extra])


def _run(args):
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def test_cli_qupath_export_per_slide_and_import_back(tmp_path, repo_root):
    tiles = {**slide_tiles(), **slide_tiles(OTHER, drop=None)}
    man, pts, out = tmp_path / "manifest.parquet", tmp_path / "points.parquet", tmp_path / "qupath"
    _manifest(man, tiles)
    table = write_table("points", _points(tiles), pts)
    params = repo_root / "params.yaml"
    code, text = _run(["export", "--points", pts, "--manifest", man, "--format", "qupath", "--out", out,
                       "--params", params])
    assert code == 0 and "3 file(s)" in text, text
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.geojson"))
    assert files == ["imgs/plain.geojson", "more/case2.geojson", "slides/case1.ome.geojson"]
    case2 = json.loads((out / "more/case2.geojson").read_text())
    assert case2["features"][0]["geometry"] == {"type": "MultiPoint", "coordinates": [
        tile_to_slide(tiles[table.column("image_id")[5].as_py()], [32.0, 1.0])[0].tolist()]}

    code, text = _run(["import", *sorted(out.rglob("*.geojson")), "--format", "qupath", "--manifest", man,
                       "--out", tmp_path / "back.parquet", "--params", params])
    assert code == 0 and "8 point(s) kept, 0 rejected" in text, text
    back = read_table("points", tmp_path / "back.parquet")
    assert back.column_names == table.column_names  # slide columns kept, null on the plain image's points
    want, got = (sorted(t.to_pylist(), key=lambda r: (r["created_at"], r["image_id"])) for t in (table, back))
    exact = ["image_id", "label", "annotator", "round", "origin", "created_at", "slide_id"]
    assert [[r[k] for k in exact] for r in got] == [[r[k] for k in exact] for r in want]
    np.testing.assert_allclose([(r["x"], r["y"]) for r in got], [(r["x"], r["y"]) for r in want], atol=1e-6)
    assert [r["slide_x"] is None for r in got] == [r["image_id"] == "p" * 32 for r in want]


def test_cli_qupath_import_matches_slides_by_name_and_counts_points_off_tiles(tmp_path, repo_root):
    tiles = {**slide_tiles(), **slide_tiles(OTHER, drop=None)}
    man = tmp_path / "manifest.parquet"
    _manifest(man, tiles)
    made = {"type": "FeatureCollection", "features": [  # QuPath names its export after the image, less .ome.tif
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [50.0, 60.0]},
         "properties": {"objectType": "annotation", "classification": {"name": "nucleus", "color": [0, 0, 255]}}},
        {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[250, 150], [300, 200]]},
         "properties": {"objectType": "annotation", "classification": {"name": "nucleus", "color": [0, 0, 255]}}},
    ]}
    (tmp_path / "case1.geojson").write_text(json.dumps(made))
    params = repo_root / "params.yaml"
    code, text = _run(["import", tmp_path / "case1.geojson", "--format", "qupath", "--manifest", man,
                       "--out", tmp_path / "pts.parquet", "--params", params])
    assert code == 0, text
    assert "case1.geojson: 2 point(s) lie on no kept tile" in text and "1 point(s) kept, 2 rejected" in text
    got = read_table("points", tmp_path / "pts.parquet").to_pylist()
    assert [(r["slide_id"], r["slide_x"], r["slide_y"]) for r in got] == [(SLIDE, 50.0, 60.0)]
    code, text = _run(["import", tmp_path / "case1.geojson", "--format", "qupath", "--manifest", man,
                       "--out", tmp_path / "strict.parquet", "--strict", "--params", params])
    assert code == 1 and "--strict: 2 point(s) rejected" in text and not (tmp_path / "strict.parquet").exists()
    (tmp_path / "case3.geojson").write_text(json.dumps(made))
    code, text = _run(["import", tmp_path / "case3.geojson", "--format", "qupath", "--manifest", man,
                       "--out", tmp_path / "none.parquet", "--params", params])
    assert code == 1 and "no image or slide in the manifest is called 'case3'" in text
    assert "Traceback" not in text and not (tmp_path / "none.parquet").exists()
