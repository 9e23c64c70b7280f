"""Stage ``teacher``: manifest -> teacher_probs table, through run(), the CLI and `dvc repro`."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from nucleate.config import params_from_dict
from nucleate.io import probs_array, read_table, table_metadata, write_image
from nucleate.teacher.random_clip import save_random_clip
from tasks import ingest, teacher

CLASSES = ["nucleus", "micronucleus", "background"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_random_clip(tmp_path_factory.mktemp("clip") / "tiny", "tiny")


@pytest.fixture
def pool(sample_dir, tmp_path):
    """Four real sample images (16- and 8-bit) plus one synthetic RGB PNG, ingested."""
    folder = tmp_path / "images"
    folder.mkdir()
    for src in sorted((sample_dir / "images" / "pool").glob("*.tif"))[::8]:
        shutil.copyfile(src, folder / src.name)
    write_image(folder / "rgb.png", np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8))
    manifest = tmp_path / "manifest.parquet"
    ingest.run(folder, manifest, log=lambda line: None)
    return folder, manifest


def _params(clip_dir, **teacher_overrides):
    section = {"backend": "clip", "model": str(clip_dir), "device": "cpu", "tile": 64, "max_tiles": 4,
               **teacher_overrides}
    return params_from_dict({"classes": CLASSES, "teacher": section})


def test_run_writes_table_with_metadata_and_reuses_cache(pool, clip_dir, tmp_path):
    folder, manifest = pool
    out, cache = tmp_path / "teacher_probs.parquet", tmp_path / "cache"
    lines = []
    report = teacher.run(manifest, out, _params(clip_dir), cache=cache, log=lines.append, tty=False)
    table = read_table("teacher_probs", out)
    ids = read_table("manifest", manifest).column("image_id").to_pylist()
    assert table.column("image_id").to_pylist() == ids and report.scored == len(ids) == 5
    meta = table_metadata(table)
    assert meta["classes"] == CLASSES and meta["teacher_id"].startswith("clip:tiny@")
    assert meta["templates"] == ["a fluorescence microscopy image of {}."] and meta["failed"] == []
    np.testing.assert_allclose(probs_array(table).sum(1), 1.0, atol=1e-5)
    assert "teacher: 0/5 images" in lines and "teacher: 5/5 images" in lines  # plain lines, not a TTY

    again = teacher.run(manifest, out, _params(clip_dir), cache=cache, log=lines.append, tty=False)
    assert (again.computed, again.from_cache) == (0, 5)
    np.testing.assert_array_equal(probs_array(read_table("teacher_probs", out)), probs_array(table))


def test_unreadable_image_is_reported_and_the_rest_written(pool, clip_dir, tmp_path):
    folder, manifest = pool
    victim = sorted(folder.glob("*.tif"))[0]
    victim.write_bytes(victim.read_bytes()[:300])  # truncated after ingest
    out = tmp_path / "probs.parquet"
    lines = []
    report = teacher.run(manifest, out, _params(clip_dir), cache=None, log=lines.append, tty=False)
    assert report.scored == 4 and len(report.failed) == 1
    assert any(line.startswith(f"failed {victim.name} (") for line in lines)
    meta = table_metadata(read_table("teacher_probs", out))
    assert meta["failed"][0]["path"] == victim.name and "TIFF" in meta["failed"][0]["reason"]

    strict_out = tmp_path / "strict.parquet"
    with pytest.raises(teacher.TeacherStageError, match="--strict: 1 image"):
        teacher.run(manifest, strict_out, _params(clip_dir), cache=None, strict=True, log=lines.append)
    assert not strict_out.exists()


def test_cli_reports_configuration_errors(pool, clip_dir, tmp_path):
    folder, manifest = pool
    params = tmp_path / "params.yaml"
    runner = CliRunner()
    base = ["teacher", "--manifest", str(manifest), "--out", str(tmp_path / "o.parquet"), "--params", str(params),
            "--no-cache"]

    params.write_text(yaml.safe_dump({"classes": CLASSES, "teacher": {"backend": "clip", "model": str(clip_dir),
                                      "templates": ["no placeholder"], "device": "cpu"}}))
    result = runner.invoke(app, base)
    assert result.exit_code == 1 and "templates[0] 'no placeholder' has no '{}'" in result.output

    params.write_text(yaml.safe_dump({"classes": CLASSES, "teacher": {"backend": "clip",
                                      "model": str(tmp_path / "missing-model")}}))
    result = runner.invoke(app, base)
    assert result.exit_code == 1
    assert "set teacher.model to a local directory or allow downloads" in result.output
    assert not (tmp_path / "o.parquet").exists()

    params.write_text(yaml.safe_dump({"classes": CLASSES, "teacher": {"backend": "clip", "model": str(clip_dir),
                                      "device": "cpu", "tile": 0}}))
    result = runner.invoke(app, base)
    assert result.exit_code == 0, result.output
    assert read_table("teacher_probs", tmp_path / "o.parquet").num_rows == 5


@pytest.mark.slow
def test_dvc_repro_teacher_stage_with_the_offline_default(repo_root, sample_dir, tmp_path):
    """The real dvc.yaml + params.yaml (conse teacher, shipped weights) on three images."""
    repo = tmp_path / "project"
    for rel in ("dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore", "storage/.gitignore",
                "tasks/ingest.py", "tasks/teacher.py"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo_root / rel, repo / rel)
    shutil.copytree(repo_root / "src" / "nucleate" / "teacher", repo / "src" / "nucleate" / "teacher",
                    ignore=shutil.ignore_patterns("__pycache__"))
    images = repo / "storage" / "sample" / "images" / "pool"
    images.mkdir(parents=True)
    for src in sorted((sample_dir / "images" / "pool").glob("*.tif"))[::12]:
        shutil.copyfile(src, images / src.name)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "DVC_NO_ANALYTICS": "1"}

    def run(*args):
        return subprocess.run(args, cwd=repo, env=env, check=True, capture_output=True, text=True)

    run("git", "init", "-q")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    run(sys.executable, "-m", "dvc", "repro", "--single-item", "ingest")
    out = run(sys.executable, "-m", "dvc", "repro", "--single-item", "teacher")
    assert "Running stage 'teacher'" in out.stdout
    table = read_table("teacher_probs", repo / "storage" / "teacher_probs.parquet")
    assert table.num_rows == 3 and table_metadata(table)["teacher_id"].startswith("conse:")
    assert list((repo / "storage" / "teacher_cache").glob("*.parquet"))
    again = run(sys.executable, "-m", "dvc", "repro", "--single-item", "teacher")
    assert "didn't change, skipping" in again.stdout and "Running stage" not in again.stdout
    ignored = run("git", "status", "--porcelain", "--ignored", "storage").stdout
    assert "storage/teacher_cache/" in ignored and "storage/teacher_probs.parquet" in ignored
