"""`dvc repro` of the real dvc.yaml in a temp git repo: sample_data -> ingest, then a no-op rerun."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nucleate.io import read_table

pytestmark = pytest.mark.slow


def _run(args, cwd):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(args, cwd=cwd, env=env, check=True, capture_output=True, text=True)


def test_dvc_repro_sample_and_ingest(repo_root, tmp_path):
    repo = tmp_path / "project"
    repo.mkdir()
    for rel in ("dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore", "storage/.gitignore",
                "tasks/ingest.py", "tasks/sample_data.py", "src/nucleate/datasets/mnfinder.py"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo_root / rel, repo / rel)
    _run(["git", "init", "-q"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], repo)

    out = _run([sys.executable, "-m", "dvc", "repro", "ingest"], repo)  # later stages: their own tests
    assert "Running stage 'ingest'" in out.stdout
    manifest = read_table("manifest", repo / "storage" / "manifest.parquet")
    assert manifest.num_rows == 49
    assert sorted(set(manifest.column("split").to_pylist())) == ["gold", "pool", "test"]
    assert (repo / "dvc.lock").is_file()

    again = _run([sys.executable, "-m", "dvc", "repro", "ingest"], repo)
    assert "didn't change, skipping" in again.stdout and "Running stage" not in again.stdout
    status = _run([sys.executable, "-m", "dvc", "status", "ingest"], repo)
    assert "up to date" in status.stdout
    assert Path(repo / ".dvc" / "config").read_text().count("analytics = false") == 1
