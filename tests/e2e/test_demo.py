"""`nucleate demo` (what `make demo` runs) with a tiny student: both strategies' rounds in their own workspaces,
the table, the PNG, the final student in storage/model, the URLs - and the checkout is never committed to."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lstemplate import copy_template

pytestmark = pytest.mark.slow

NUCLEATE = str(Path(sys.executable).with_name("nucleate"))
TINY = {"select.budget": 2, "model.width": 8, "model.nucleus_radius_px": 5.0, "train.epochs": 1,
        "train.steps_per_epoch": 2, "train.batch_size": 2, "train.patch_px": 64, "donuseg.start_epoch": 0}


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_demo_two_strategies(repo_root, tmp_path, sample_dir, ls_template, copy_prefect_home, teacher_csv):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copyfile(repo_root / "params.yaml", checkout / "params.yaml")
    shutil.copytree(sample_dir, checkout / "storage" / "sample")
    _git(checkout, "init", "-q")
    _git(checkout, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _git(checkout, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "the user's checkout")
    copy_template(ls_template, checkout / ".demo" / "ls-data")
    env = {**os.environ, "PREFECT_HOME": str(copy_prefect_home(tmp_path / "prefect")),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    env.pop("PREFECT_API_URL", None)
    sets = [f"--set={k}={v}" for k, v in {**TINY, "teacher.backend": "file", "teacher.model": teacher_csv}.items()]
    out = subprocess.run([NUCLEATE, "demo", "--rounds", "1", *sets], cwd=checkout, env=env, capture_output=True,
                         text=True, timeout=1200)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "Traceback" not in text
    table = [line.split() for line in out.stdout.splitlines() if line.startswith(("pcoreset ", "random "))]
    assert [(row[0], row[1], row[2]) for row in table] == [("pcoreset", "1", "2"), ("random", "1", "2")], out.stdout
    assert all(0.0 <= float(v) <= 1.0 for row in table for v in row[4:7])
    assert "Prefect UI:   http://127.0.0.1:" in out.stdout and "Label Studio: http://127.0.0.1:" in out.stdout
    assert (checkout / ".demo" / "learning_curve.png").stat().st_size > 5000
    for strategy in ("pcoreset", "random"):
        assert _git(checkout / ".demo" / strategy, "tag").split() == ["round-001"]
        assert (checkout / ".demo" / strategy / "storage" / "reports" / "round-001.md").is_file()
    model = checkout / "storage" / "model"
    assert {"student.pt", "student.json", "model_card.json"} <= {p.name for p in model.iterdir()}
    # the user's checkout: same single commit, no tags, servers stopped
    assert _git(checkout, "rev-list", "--count", "HEAD") == "1" and _git(checkout, "tag") == ""
    assert "servers stopped" in out.stdout
    # the demo's student segments new images
    two = tmp_path / "two"
    two.mkdir()
    for image in sorted((sample_dir / "images" / "test").iterdir())[:2]:
        shutil.copyfile(image, two / image.name)
    pred = subprocess.run([NUCLEATE, "predict", "--model", "storage/model", "--images", str(two), "--out",
                           str(tmp_path / "pred")], cwd=checkout, env=env, capture_output=True, text=True)
    assert pred.returncode == 0, pred.stderr[-2000:]
    assert len(list((tmp_path / "pred").glob("*.tif"))) == 2
