"""`dvc repro` of the real dvc.yaml on a fresh copy of the project in a temp git repo, as a new user runs it:
the stages before the first round do their work, `points` stops with one line naming what is missing and the
command that produces it (no traceback, no errno), and a second `dvc repro` re-runs nothing that is done."""

import os
import shutil
import subprocess
import sys

import pytest

from nucleate.io import read_table

pytestmark = pytest.mark.slow

TRACKED = ("dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore", "storage/.gitignore",
           "storage/annotations/README.md")
CODE = ("src", "tasks", "flows")


def _run(args, cwd, check=True):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(args, cwd=cwd, env=env, check=check, capture_output=True, text=True)


@pytest.fixture(scope="module")
def project(repo_root, tmp_path_factory):
    repo = tmp_path_factory.mktemp("fresh") / "project"
    repo.mkdir()
    for rel in TRACKED:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo_root / rel, repo / rel)
    for rel in CODE:
        shutil.copytree(repo_root / rel, repo / rel, ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run([*git, "init", "-q"], repo)
    _run([*git, "add", "-A"], repo)
    _run([*git, "commit", "-qm", "fresh clone"], repo)
    return repo


def test_fresh_clone_runs_up_to_the_first_round_then_says_what_is_missing(project):
    result = _run([sys.executable, "-m", "dvc", "repro"], project, check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    for stage in ("sample_data", "ingest", "teacher", "select", "points"):
        assert f"Running stage '{stage}'" in out, out[-3000:]
    assert "Running stage 'pseudomasks'" not in out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out[-3000:]
    assert "storage/annotations" in errors[0] and "nucleate ls pull" in errors[0]
    assert "Traceback" not in out and "Errno" not in out
    manifest = read_table("manifest", project / "storage" / "manifest.parquet")
    assert manifest.num_rows == 49
    selection = read_table("selection", project / "storage" / "selection.parquet")
    assert selection.num_rows == 5 and selection.column("round").to_pylist() == [1] * 5


def test_second_repro_reruns_only_what_must_run(project):
    again = _run([sys.executable, "-m", "dvc", "repro", "select"], project)
    for stage in ("sample_data", "ingest", "teacher"):
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout
    assert "Running stage 'select'" in again.stdout  # always_changed: labeled / in-flight images move
    status = _run([sys.executable, "-m", "dvc", "status", "teacher"], project)
    assert "up to date" in status.stdout
    assert (project / ".dvc" / "config").read_text().count("analytics = false") == 1
