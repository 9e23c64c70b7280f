"""Stage ``select`` on a temp storage tree built from the real sample images: labeled, in-flight, rounds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
import typer
import yaml
from logcapture import LineLog
from typer.testing import CliRunner

from nucleate.config import SelectParams
from nucleate.device import DeviceError
from nucleate.io import probs_table, read_table, table_metadata, write_table
from nucleate.io.layout import MissingInput
from nucleate.selection import select
from tasks import ingest
from tasks import select as stage
from tasks._stage import StageError

CLASSES = ["nucleus", "micronucleus", "background"]


@pytest.fixture(scope="module")
def base(sample_dir, tmp_path_factory):
    """Manifest of the 49 real sample images + teacher probabilities for all of them."""
    root = tmp_path_factory.mktemp("select_base")
    ingest.run(folder=sample_dir / "images", manifest=root / "manifest.parquet")
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


def _logger():
    log = LineLog()
    return log, log.lines


def _run(path, seed=0, **kw):
    """Run the stage on the tree at ``path``; keywords named like SelectParams fields set the params."""
    params = SelectParams(device="cpu")
    params = replace(params, **{k: kw.pop(k) for k in list(kw) if k in SelectParams.__dataclass_fields__})
    kw.setdefault("manifest", path / "manifest.parquet")
    kw.setdefault("probs", path / "teacher_probs.parquet")
    kw.setdefault("points", path / "points.parquet")
    kw.setdefault("inflight", path / "inflight.parquet")
    kw.setdefault("out", path / "selection.parquet")
    log, lines = _logger()
    report = stage.run(params, seed, log=log, **kw)
    return report, lines


def _inflight(path, image_ids, round_no):
    write_table("inflight", {"image_id": image_ids, "round": [round_no] * len(image_ids),
                             "task_id": list(range(100, 100 + len(image_ids)))}, path / "inflight.parquet")


def _features(path, ids, dim=8, seed=0):
    feats = np.random.default_rng(seed).normal(size=(len(ids), dim)).astype(np.float32)
    write_table("student_features", {"image_id": ids, "features": feats.tolist()}, path / "features.parquet")
    return dict(zip(ids, feats, strict=True))


def test_selection_skips_labeled_and_inflight_and_matches_the_core(tree):
    path, manifest, probs, pool, labeled = tree
    inflight = pool[10:12]
    _inflight(path, inflight, 2)
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
    assert meta["teacher_id"] == "test-dirichlet" and meta["space"] == "teacher" and meta["features"] is None
    assert report.image_ids == picked and report.round == 3 and lines == []
    assert report.lines()[0].startswith("select: round 3: pcoreset picked 5 of 25 candidate(s) (3 labeled, 2 in")
    assert report.lines()[1] == f"   0  {picked[0]}  {dist[0]:.4f}" and len(report.lines()) == 6
    assert report.as_dict()["out"] == str(path / "selection.parquet")


def test_rounds_never_reselect_inflight_images(tree):
    path, _, _, pool, labeled = tree
    seen: list[str] = []
    for round_no in range(2, 9):
        report, _ = _run(path, strategy="pcoreset", budget=4)
        assert report.round == round_no
        assert not set(report.image_ids) & (set(seen) | set(labeled))
        seen += report.image_ids
        _inflight(path, seen, round_no)
    assert sorted(seen) == sorted(set(pool) - set(labeled))  # 27 images, then nothing is left
    with pytest.raises(StageError, match="nothing left to select: all 30 pool image"):
        _run(path, budget=4)


def test_budget_larger_than_the_pool_selects_the_rest(tree):
    path, _, _, pool, labeled = tree
    _inflight(path, pool[:20], 1)
    report, lines = _run(path, strategy="entropy", budget=50)
    assert sorted(report.image_ids) == sorted(set(pool[20:]) - set(labeled))
    assert any("only 10 selectable image(s) left" in line for line in lines)
    assert report.min_distance == [None] * 10  # entropy has no distance


def test_images_finished_without_points_are_labeled_and_count_for_the_round(tree):
    """Annotated with no nucleus, or skipped: no point rows, but the points report lists them as finished."""
    path, _, _, pool, labeled = tree
    unlabeled = [i for i in pool if i not in labeled]
    done = unlabeled[:20]
    (path / "points_report.json").write_text(json.dumps({"finished_image_ids": done, "last_round": 4}))
    report, _ = _run(path, strategy="random", budget=100, points_report=path / "points_report.json")
    assert not set(report.image_ids) & set(done) and report.round == 5
    assert len(report.image_ids) == len(unlabeled) - len(done)
    (path / "points_report.json").write_text("{not json")
    with pytest.raises(StageError, match="points_report.json: not a points report"):
        _run(path, points_report=path / "points_report.json")


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


def test_coreset_uses_the_student_features_table(tree):
    path, manifest, probs, pool, labeled = tree
    ids = list(probs)
    feats = _features(path, ids)
    report, lines = _run(path, strategy="coreset", budget=4, features=path / "features.parquet")
    centres = [i for i in manifest.column("image_id").to_pylist() if i in set(labeled)]
    candidates = [i for i in pool if i not in set(labeled)]
    expected = select("coreset", np.stack([probs[i] for i in candidates + centres]), budget=4,
                      labeled=np.arange(len(candidates), len(candidates) + len(centres)),
                      features=np.stack([feats[i] for i in candidates + centres]))
    assert report.image_ids == [candidates[i] for i in expected]
    assert all(d is not None for d in report.min_distance) and not any("features" in line for line in lines)
    assert table_metadata(read_table("selection", path / "selection.parquet"))["features"] == "student_features"


@pytest.mark.parametrize("strategy", ["coreset", "badge"])
def test_feature_strategies_without_features_name_the_missing_file(tree, strategy):
    path = tree[0]
    with pytest.raises(MissingInput) as err:
        _run(path, strategy=strategy, budget=3, features=path / "student_features.parquet")
    message = str(err.value)
    assert message.startswith(f"{path / 'student_features.parquet'}: student features not found; produce it with "
                              "`nucleate train`")
    assert "select.probs_as_features: true" in message and "\n" not in message
    assert not (path / "selection.parquet").exists()
    with pytest.raises(MissingInput, match=r"^storage/student_features\.parquet: student features not found"):
        _run(path, strategy=strategy, budget=3)  # no path given: the layout's


@pytest.mark.parametrize("strategy", ["coreset", "badge"])
def test_probs_as_features_uses_the_probability_rows_and_says_so(tree, strategy):
    path, manifest, probs, pool, labeled = tree
    report, lines = _run(path, strategy=strategy, budget=4, seed=3, probs_as_features=True,
                         features=path / "student_features.parquet")  # absent, and not needed
    assert lines[-1] == (f"select: {strategy} uses the teacher probability rows as features "
                         "(select.probs_as_features: true)")
    centres = [i for i in manifest.column("image_id").to_pylist() if i in set(labeled)]
    candidates = [i for i in pool if i not in set(labeled)]
    matrix = np.stack([probs[i] for i in candidates + centres])
    expected = select(strategy, matrix, budget=4, seed=3, features=matrix,
                      labeled=np.arange(len(candidates), len(matrix)))
    assert report.image_ids == [candidates[i] for i in expected]
    assert table_metadata(read_table("selection", path / "selection.parquet"))["features"] == "teacher_probs"


def test_features_table_must_cover_every_image_and_follow_its_schema(tree):
    path, _, probs, pool, _ = tree
    _features(path, [i for i in probs if i != pool[3]])
    with pytest.raises(StageError, match=rf"features\.parquet: no features for 1 of the 30 image\(s\) selection "
                                         rf"needs \(e\.g\. {pool[3]}\)"):
        _run(path, strategy="coreset", budget=2, features=path / "features.parquet")
    pq.write_table(pa.table({"image_id": list(probs)[:2], "features": [[1.0, 2.0], [1.0]]}), path / "bad.parquet")
    with pytest.raises(ValueError, match=r"bad\.parquet: column 'features' row 1 \(image_id \w+\) has 1 values"):
        _run(path, strategy="coreset", budget=2, features=path / "bad.parquet")


@pytest.mark.parametrize(("table", "pattern"), [
    (pa.table({"id": ["a"], "round": [1], "task_id": [1]}), "inflight table is missing column 'image_id'"),
    (pa.table({"image_id": pa.array(["a", None]), "round": [1, 1], "task_id": [1, 2]}),
     r"'image_id' is empty \(null\) at row 1"),
    (pa.table({"image_id": ["a", "b"], "round": [1, None], "task_id": [1, 2]}), r"'round' is empty \(null\) at row 1"),
])
def test_bad_inflight_files_are_named(tree, table, pattern):
    path = tree[0]
    pq.write_table(table, path / "inflight.parquet")
    with pytest.raises(ValueError, match=rf"^{path / 'inflight.parquet'}: .*{pattern}"):
        _run(path, budget=2)
    assert not (path / "selection.parquet").exists()


def test_missing_inputs_name_the_producing_command(tree):
    path = tree[0]
    with pytest.raises(MissingInput, match=r"student_probs\.parquet: student probs not found; produce it with "
                                           r"`nucleate train`.*set select\.space: teacher"):
        _run(path, space="student", probs=path / "student_probs.parquet")
    with pytest.raises(MissingInput, match=r"nope\.parquet: manifest not found; produce it with `nucleate ingest"):
        _run(path, manifest=path / "nope.parquet")
    (path / "teacher_probs.parquet").unlink()
    with pytest.raises(MissingInput, match=r"teacher_probs\.parquet: teacher probs not found; produce it with "
                                           r"`nucleate teacher`"):
        _run(path)


def test_student_space_reads_the_student_probs_table(tree):
    path, _, probs, pool, _ = tree
    ids = list(probs)
    table = probs_table(ids, np.stack([probs[i] for i in ids]), classes=CLASSES, teacher_id="unused")
    meta = {**table.schema.metadata, b"nucleate.model_id": b'"student-r1"'}
    write_table("student_probs", table.replace_schema_metadata(meta), path / "student_probs.parquet")
    report, _ = _run(path, space="student", probs=path / "student_probs.parquet", budget=2)
    meta = table_metadata(read_table("selection", path / "selection.parquet"))
    assert meta["space"] == "student" and meta["model_id"] == "student-r1" and len(report.image_ids) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_cuda_device_without_cuda_names_the_setting(tree):
    with pytest.raises(DeviceError, match="^select.device is 'cuda' but torch sees no CUDA device"):
        _run(tree[0], device="cuda", budget=1)


def _cli():
    app = typer.Typer(add_completion=False)
    app.command()(stage.command)
    return app


def test_cli_reads_params_and_the_dvc_flags(tree):
    path, _, _, pool, labeled = tree
    params = path / "params.yaml"
    params.write_text("seed: 4\nselect:\n  strategy: random\n  budget: 3\n  device: cpu\n")
    args = ["--params", str(params), "--manifest", str(path / "manifest.parquet"),
            "--teacher-probs", str(path / "teacher_probs.parquet"), "--points", str(path / "points.parquet"),
            "--inflight", str(path / "inflight.parquet"), "--out", str(path / "selection.parquet")]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    table = read_table("selection", path / "selection.parquet")
    assert table.num_rows == 3 and set(table.column("strategy").to_pylist()) == {"random"}
    assert table_metadata(table)["seed"] == 4
    assert result.stdout.splitlines()[0].startswith("select: round 2: random picked 3 of 27 candidate(s)")

    result = CliRunner().invoke(_cli(), [*args, "--round", "7"])
    assert result.exit_code == 0, result.output
    assert read_table("selection", path / "selection.parquet").column("round").to_pylist() == [7, 7, 7]

    params.write_text("select:\n  strategy: kcenter\n  budgett: 3\n")
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 1
    assert "select.strategy: must be one of" in result.output and "did you mean select.budget" in result.output


def test_cli_missing_features_is_one_line(tree):
    path = tree[0]
    params = path / "params.yaml"
    params.write_text("select:\n  strategy: coreset\n  device: cpu\n")
    result = CliRunner().invoke(_cli(), ["--params", str(params), "--manifest", str(path / "manifest.parquet"),
                                         "--teacher-probs", str(path / "teacher_probs.parquet"),
                                         "--features", str(path / "student_features.parquet"),
                                         "--out", str(path / "selection.parquet")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: {path / 'student_features.parquet'}: student features not found; produce it with `nucleate train` "
        "(or `dvc repro train`), or set select.probs_as_features: true"]
    assert "Traceback" not in result.output


# --- `dvc repro select` with the real dvc.yaml and params.yaml in a temp git repo (real sample images)


def copy_stage_files(repo_root, repo, stage):
    """Copy the DVC project files and every code dependency ``dvc.yaml`` lists for ``stage`` into ``repo``."""
    deps = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"][stage]["deps"]
    for rel in ["dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore", "storage/.gitignore",
                *(d for d in deps if not d.startswith(("storage/", "$")))]:
        src, dst = repo_root / rel, repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(src, dst)


def _shell(args, cwd):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True, text=True)


@pytest.mark.slow
def test_dvc_repro_select_stage(repo_root, sample_dir, tmp_path):
    repo = tmp_path / "project"
    copy_stage_files(repo_root, repo, "select")
    storage = repo / "storage"
    ingest.run(folder=sample_dir / "images", manifest=storage / "manifest.parquet")
    manifest = read_table("manifest", storage / "manifest.parquet")
    ids = manifest.column("image_id").to_pylist()
    pool = [i for i, s in zip(ids, manifest.column("split").to_pylist(), strict=True) if s == "pool"]
    classes = ["nucleus", "micronucleus", "background"]
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=len(ids)).astype(np.float32)
    write_table("teacher_probs", probs_table(ids, probs, classes=classes, teacher_id="t"),
                storage / "teacher_probs.parquet")
    gt = read_table("points", sample_dir / "points.parquet")
    write_table("points", gt.filter(pc.is_in(gt.column("image_id"), pa.array(pool[:2]))),
                storage / "points.parquet")
    write_table("inflight", {"image_id": pool[2:4], "round": [1, 1], "task_id": [11, 12]},
                storage / "inflight.parquet")
    _shell(["git", "init", "-q"], repo)
    _shell(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], repo)
    _shell(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], repo)

    out = _shell([sys.executable, "-m", "dvc", "repro", "--single-item", "select"], repo)
    assert "Running stage 'select'" in out.stdout
    table = read_table("selection", storage / "selection.parquet")
    picked = table.column("image_id").to_pylist()
    assert len(picked) == 5 and set(picked) <= set(pool[4:])  # params.yaml: select.budget 5
    assert table.column("round").to_pylist() == [2] * 5  # after in-flight round 1
    assert "select:" in (repo / "dvc.lock").read_text()

    params = (repo / "params.yaml").read_text()
    assert "  budget: 5 " in params
    (repo / "params.yaml").write_text(params.replace("  budget: 5 ", "  budget: 3 ", 1))
    _shell([sys.executable, "-m", "dvc", "repro", "--single-item", "select"], repo)
    again = read_table("selection", storage / "selection.parquet").column("image_id").to_pylist()
    assert again == picked[:3]  # greedy k-center: a smaller budget is a prefix of the larger one
