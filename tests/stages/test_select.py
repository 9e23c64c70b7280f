"""Stage ``select`` on a temp storage tree built from the real sample images: labeled, in-flight, rounds."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from nucleate.io import probs_table, read_table, table_metadata, write_table
from nucleate.selection import select
from tasks import ingest
from tasks import select as stage

CLASSES = ["nucleus", "micronucleus", "background"]


@pytest.fixture(scope="module")
def base(sample_dir, tmp_path_factory):
    """Manifest of the 49 real sample images + teacher probabilities for all of them."""
    root = tmp_path_factory.mktemp("select_base")
    ingest.run(sample_dir / "images", root / "manifest.parquet", log=lambda _: None)
    manifest = read_table("manifest", root / "manifest.parquet")
    ids = manifest.column("image_id").to_pylist()
    probs = np.random.default_rng(5).dirichlet([0.5, 0.5, 0.5], size=len(ids)).astype(np.float32)
    write_table("teacher_probs", probs_table(ids, probs, classes=CLASSES, teacher_id="test-dirichlet"),
                root / "teacher_probs.parquet")
    return root, manifest, dict(zip(ids, probs, strict=True))


@pytest.fixture
def tree(base, tmp_path, sample_dir):
    """A fresh storage tree: manifest, probs, and GT points of three pool images (round 1)."""
    root, manifest, probs = base
    for name in ("manifest.parquet", "teacher_probs.parquet"):
        (tmp_path / name).write_bytes((root / name).read_bytes())
    gt = read_table("points", sample_dir / "points.parquet")
    pool = [i for i, s in zip(manifest.column("image_id").to_pylist(), manifest.column("split").to_pylist(),
                              strict=True) if s == "pool"]
    labeled = pool[4:7]
    pts = gt.filter(pc.is_in(gt.column("image_id"), pa.array(labeled)))
    pts = pts.set_column(pts.schema.get_field_index("round"), "round", pa.array([1] * pts.num_rows, pa.int32()))
    write_table("points", pts, tmp_path / "points.parquet")
    return tmp_path, manifest, probs, pool, labeled


def _run(path, **kw):
    lines: list[str] = []
    kw.setdefault("points", path / "points.parquet")
    kw.setdefault("inflight", path / "inflight.parquet")
    report = stage.run(path / "manifest.parquet", path / "teacher_probs.parquet", path / "selection.parquet",
                       log=lines.append, **kw)
    return report, lines


def test_selection_skips_labeled_and_inflight_and_matches_the_core(tree):
    path, manifest, probs, pool, labeled = tree
    inflight = pool[10:12]
    stage.write_inflight(path / "inflight.parquet", inflight, round=2)
    report, lines = _run(path, strategy="pcoreset", budget=5)

    table = read_table("selection", path / "selection.parquet")
    assert table.column("rank").to_pylist() == [0, 1, 2, 3, 4]
    assert set(table.column("round").to_pylist()) == {3}  # 1 + max(points round 1, in-flight round 2)
    assert set(table.column("strategy").to_pylist()) == {"pcoreset"}
    picked = table.column("image_id").to_pylist()
    assert not set(picked) & set(labeled + inflight) and set(picked) <= set(pool)

    # same answer as the core on candidates (pool order) with labeled + in-flight rows as centres
    ids = manifest.column("image_id").to_pylist()
    centres = [i for i in ids if i in set(labeled + inflight)]
    candidates = [i for i in pool if i not in set(centres)]
    matrix = np.stack([probs[i] for i in candidates + centres])
    expected = select("pcoreset", matrix, budget=5, labeled=np.arange(len(candidates), len(matrix)))
    assert picked == [candidates[i] for i in expected]
    dist = table.column("min_distance").to_pylist()
    assert all(d is not None and d > 0 for d in dist) and dist == sorted(dist, reverse=True)

    meta = table_metadata(table)
    assert (meta["candidates"], meta["labeled"], meta["inflight"]) == (len(candidates), 3, 2)
    assert meta["teacher_id"] == "test-dirichlet" and meta["space"] == "teacher"
    assert report.image_ids == picked and any("round 3" in line for line in lines)


def test_rounds_never_reselect_inflight_images(tree):
    path, _, _, pool, labeled = tree
    seen: list[str] = []
    for round_no in range(2, 9):
        report, _ = _run(path, strategy="pcoreset", budget=4)
        assert report.round == round_no
        assert not set(report.image_ids) & (set(seen) | set(labeled))
        seen += report.image_ids
        stage.write_inflight(path / "inflight.parquet", seen, round=round_no)
    assert sorted(seen) == sorted(set(pool) - set(labeled))  # 27 images, then nothing is left
    with pytest.raises(stage.SelectError, match="nothing left to select: all 30 pool image"):
        _run(path, budget=4)


def test_budget_larger_than_the_pool_selects_the_rest(tree):
    path, _, _, pool, labeled = tree
    stage.write_inflight(path / "inflight.parquet", pool[:20], round=1)
    report, lines = _run(path, strategy="entropy", budget=50)
    assert sorted(report.image_ids) == sorted(set(pool[20:]) - set(labeled))
    assert any("only 10 selectable image(s) left" in line for line in lines)
    assert report.min_distance == [None] * 10  # entropy has no distance


def test_first_round_needs_no_points_or_inflight_file(tree):
    path, manifest, probs, pool, _ = tree
    (path / "points.parquet").unlink()
    report, lines = _run(path, budget=3)
    assert report.round == 1 and report.labeled == 0
    assert any("no points table" in line for line in lines) and any("no in-flight table" in line for line in lines)
    assert report.min_distance[0] is None  # cold start: no centre yet
    matrix = np.stack([probs[i] for i in pool])
    assert report.image_ids == [pool[i] for i in select("pcoreset", matrix, budget=3)]


def test_pool_images_without_probabilities_are_reported_and_skipped(tree):
    path, _, probs, pool, _ = tree
    keep = [i for i in probs if i != pool[0] and i != pool[1]]
    write_table("teacher_probs", probs_table(keep, np.stack([probs[i] for i in keep]), classes=CLASSES,
                                             teacher_id="t"), path / "teacher_probs.parquet")
    report, lines = _run(path, strategy="random", budget=27)
    assert pool[0] not in report.image_ids and pool[1] not in report.image_ids
    assert any("2 pool image(s) have no row" in line for line in lines)


def test_strategies_with_features(tree):
    path, _, probs, pool, _ = tree
    ids = list(probs)
    feats = np.random.default_rng(0).normal(size=(len(ids), 8)).astype(np.float32)
    offsets = pa.array(np.arange(0, feats.size + 1, 8, dtype=np.int32))
    pq.write_table(pa.table({"image_id": ids, "features": pa.ListArray.from_arrays(offsets,
                                                                                  pa.array(feats.ravel()))}),
                   path / "features.parquet")
    report, _ = _run(path, strategy="coreset", budget=4, features=path / "features.parquet")
    assert len(report.image_ids) == 4 and all(d is not None for d in report.min_distance)
    report, lines = _run(path, strategy="badge", budget=4, seed=3)
    assert len(set(report.image_ids)) == 4
    assert any("uses the teacher probability rows as features" in line for line in lines)


@pytest.mark.parametrize(("table", "pattern"), [
    (pa.table({"id": ["a"]}), "needs an 'image_id' column"),
    (pa.table({"image_id": pa.array(["a", None])}), r"'image_id' is empty \(null\) at row 1"),
    (pa.table({"image_id": [1, 2]}), "'image_id' has type int64, expected string"),
])
def test_bad_inflight_files_are_named(tree, table, pattern):
    path = tree[0]
    pq.write_table(table, path / "inflight.parquet")
    with pytest.raises(ValueError, match=pattern):
        _run(path, budget=2)
    assert not (path / "selection.parquet").exists()


def test_student_space_without_student_probabilities(tree):
    path = tree[0]
    with pytest.raises(FileNotFoundError, match="student probabilities not found"):
        stage.run(path / "manifest.parquet", path / "student_probs.parquet", path / "sel.parquet", space="student",
                  log=lambda _: None)


def test_cli_reads_params_and_overrides(tree):
    path, _, _, pool, labeled = tree
    params = path / "params.yaml"
    params.write_text("seed: 4\nselect:\n  strategy: random\n  budget: 3\n  device: cpu\n")
    args = ["--params", str(params), "--manifest", str(path / "manifest.parquet"),
            "--teacher-probs", str(path / "teacher_probs.parquet"), "--points", str(path / "points.parquet"),
            "--inflight", str(path / "inflight.parquet"), "--out", str(path / "selection.parquet")]
    from flows.cli import app

    result = CliRunner().invoke(app, ["select", *args])
    assert result.exit_code == 0, result.output
    table = read_table("selection", path / "selection.parquet")
    assert table.num_rows == 3 and set(table.column("strategy").to_pylist()) == {"random"}
    assert table_metadata(table)["seed"] == 4

    result = CliRunner().invoke(app, ["select", *args, "--strategy", "margin", "--budget", "2", "--round", "7"])
    assert result.exit_code == 0, result.output
    table = read_table("selection", path / "selection.parquet")
    assert table.column("round").to_pylist() == [7, 7] and table.column("strategy")[0].as_py() == "margin"

    params.write_text("select:\n  strategy: kcenter\n  budgett: 3\n")
    result = CliRunner().invoke(app, ["select", *args])
    assert result.exit_code == 1
    assert "select.strategy: must be one of" in result.output and "did you mean select.budget" in result.output
