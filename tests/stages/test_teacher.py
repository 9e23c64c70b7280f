"""Stage ``teacher``: manifest -> teacher_probs table, through run(), the CLI and `dvc repro`."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import typer
import yaml
from logcapture import LineLog
from typer.testing import CliRunner

from nucleate.config import TeacherParams, params_from_dict
from nucleate.io import probs_array, read_table, table_metadata, write_image
from nucleate.io.layout import MissingInput
from nucleate.teacher.random_clip import save_random_clip
from tasks import ingest, teacher
from tasks._stage import StageError

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
    ingest.run(folder=folder, manifest=manifest)
    return folder, manifest


def _params(clip_dir, **teacher_overrides) -> TeacherParams:
    section = {"classes": CLASSES, "backend": "clip", "model": str(clip_dir), "device": "cpu", "tile": 64,
               "max_tiles": 4, **teacher_overrides}
    return params_from_dict({"teacher": section}).teacher


def _logger():
    log = LineLog()
    return log, log.lines


def _cli():
    app = typer.Typer(add_completion=False)
    app.command()(teacher.command)
    return app


def test_teacher_options_follow_the_teacher_section(clip_dir):
    backend, options = teacher.teacher_options(_params(clip_dir, percentile_low=1.0))
    assert backend == "clip" and options["classes"] == tuple(CLASSES) and options["percentiles"] == (1.0, 99.8)
    backend, options = teacher.teacher_options(TeacherParams(backend="file", model="p.csv", classes=("a", "b")))
    assert (backend, options) == ("file", {"classes": ("a", "b"), "templates": TeacherParams().templates,
                                           "model": "p.csv"})


def test_run_writes_table_with_metadata_and_reuses_cache(pool, clip_dir, tmp_path):
    folder, manifest = pool
    out, cache = tmp_path / "teacher_probs.parquet", tmp_path / "cache"
    log, lines = _logger()
    report = teacher.run(_params(clip_dir), manifest=manifest, out=out, cache=cache, log=log)
    table = read_table("teacher_probs", out)
    ids = read_table("manifest", manifest).column("image_id").to_pylist()
    assert table.column("image_id").to_pylist() == ids and report.scored == len(ids) == 5
    meta = table_metadata(table)
    assert meta["classes"] == CLASSES and meta["teacher_id"].startswith("clip:tiny@")
    assert meta["templates"] == ["a fluorescence microscopy image of {}."] and meta["failed"] == []
    np.testing.assert_allclose(probs_array(table).sum(1), 1.0, atol=1e-5)
    assert "teacher: 0/5 images" in lines and "teacher: 5/5 images" in lines  # plain lines, not a TTY
    assert report.lines()[0].startswith("teacher: 5 scored (5 computed, 0 from cache), 0 failed")
    assert report.as_dict()["out"] == str(out)

    again = teacher.run(_params(clip_dir), manifest=manifest, out=out, cache=cache, log=log)
    assert (again.computed, again.from_cache) == (0, 5)
    np.testing.assert_array_equal(probs_array(read_table("teacher_probs", out)), probs_array(table))


def test_unreadable_image_is_reported_and_the_rest_written(pool, clip_dir, tmp_path):
    folder, manifest = pool
    victim = sorted(folder.glob("*.tif"))[0]
    victim.write_bytes(victim.read_bytes()[:300])  # truncated after ingest
    out = tmp_path / "probs.parquet"
    log, lines = _logger()
    report = teacher.run(_params(clip_dir), manifest=manifest, out=out, log=log)
    assert report.scored == 4 and len(report.failed) == 1
    assert any(line.startswith(f"failed {victim.name} (") for line in lines)
    meta = table_metadata(read_table("teacher_probs", out))
    assert meta["failed"][0]["path"] == victim.name and "TIFF" in meta["failed"][0]["reason"]

    strict_out = tmp_path / "strict.parquet"
    with pytest.raises(StageError, match="--strict: 1 image"):
        teacher.run(_params(clip_dir), manifest=manifest, out=strict_out, strict=True, log=log)
    assert not strict_out.exists()


def test_missing_manifest_names_the_producing_command(clip_dir, tmp_path):
    with pytest.raises(MissingInput, match=r"m\.parquet: manifest not found; produce it with `nucleate ingest"):
        teacher.run(_params(clip_dir), manifest=tmp_path / "m.parquet", out=tmp_path / "o.parquet")
    result = CliRunner().invoke(_cli(), ["--manifest", str(tmp_path / "m.parquet"), "--out",
                                         str(tmp_path / "o.parquet"), "--params", str(tmp_path / "none.yaml")])
    assert result.exit_code == 1 and "params file not found" in result.output


def test_cli_reports_configuration_errors(pool, clip_dir, tmp_path):
    folder, manifest = pool
    params = tmp_path / "params.yaml"
    runner = CliRunner()
    base = ["--manifest", str(manifest), "--out", str(tmp_path / "o.parquet"), "--params", str(params),
            "--no-cache"]

    params.write_text(yaml.safe_dump({"teacher": {"classes": CLASSES, "backend": "clip", "model": str(clip_dir),
                                                  "templates": ["no placeholder"], "device": "cpu"}}))
    result = runner.invoke(_cli(), base)
    assert result.exit_code == 1 and "templates[0] 'no placeholder' has no '{}'" in result.output

    params.write_text(yaml.safe_dump({"teacher": {"classes": CLASSES, "backend": "clip",
                                                  "model": str(tmp_path / "missing-model")}}))
    result = runner.invoke(_cli(), base)
    assert result.exit_code == 1
    assert "set teacher.model to a local directory or allow downloads" in result.output
    assert not (tmp_path / "o.parquet").exists()

    params.write_text(yaml.safe_dump({"teacher": {"classes": ["nucleus"], "backend": "clip", "model": str(clip_dir),
                                                  "device": "cpu"}}))
    result = runner.invoke(_cli(), base)
    assert result.exit_code == 1 and "error: teacher.classes: only one class ('nucleus')" in result.output

    params.write_text(yaml.safe_dump({"teacher": {"classes": CLASSES, "backend": "clip", "model": str(clip_dir),
                                                  "device": "cpu", "tile": 0}}))
    result = runner.invoke(_cli(), base)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("teacher: 5 scored")
    assert read_table("teacher_probs", tmp_path / "o.parquet").num_rows == 5


@pytest.mark.slow
def test_dvc_repro_teacher_stage_with_the_offline_default(repo_root, sample_dir, tmp_path):
    """The real dvc.yaml + params.yaml (conse teacher, shipped weights) on three images."""
    repo = tmp_path / "project"
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    code = {d for name in ("ingest", "teacher") for d in stages[name]["deps"] if not d.startswith(("storage/", "$"))}
    for rel in ["dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore", "storage/.gitignore", *sorted(code)]:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        if (repo_root / rel).is_dir():
            shutil.copytree(repo_root / rel, repo / rel, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(repo_root / rel, repo / rel)
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
