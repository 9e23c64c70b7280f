"""`dvc repro select` with the real dvc.yaml and params.yaml in a temp git repo (real sample images)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from nucleate.io import probs_table, read_table, write_table
from tasks import ingest

pytestmark = pytest.mark.slow


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


def _run(args, cwd):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True, text=True)


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
    _run(["git", "init", "-q"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], repo)

    out = _run([sys.executable, "-m", "dvc", "repro", "--single-item", "select"], repo)
    assert "Running stage 'select'" in out.stdout
    table = read_table("selection", storage / "selection.parquet")
    picked = table.column("image_id").to_pylist()
    assert len(picked) == 5 and set(picked) <= set(pool[4:])  # params.yaml: select.budget 5
    assert table.column("round").to_pylist() == [2] * 5  # after in-flight round 1
    assert "select:" in (repo / "dvc.lock").read_text()

    params = (repo / "params.yaml").read_text()
    assert "  budget: 5 " in params
    (repo / "params.yaml").write_text(params.replace("  budget: 5 ", "  budget: 3 ", 1))
    _run([sys.executable, "-m", "dvc", "repro", "--single-item", "select"], repo)
    again = read_table("selection", storage / "selection.parquet").column("image_id").to_pylist()
    assert again == picked[:3]  # greedy k-center: a smaller budget is a prefix of the larger one
