"""`dvc repro` of the real dvc.yaml on a fresh copy of the project in a temp git repo, as a new user runs it:
the stages before the first round do their work, `points` stops with one line naming what is missing and the
command that produces it (no traceback, no errno), and a second `dvc repro` re-runs nothing that is done."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

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


def _nucleate(args, cwd, check=True):
    return _run([os.path.join(os.path.dirname(sys.executable), "nucleate"), *map(str, args)], cwd, check=check)


def test_a_round_by_hand_leaves_dvc_lock_naming_the_export(project, ls_template):
    """select (done above) -> ls up -> ls push -> annotate-sim -> ls pull -> dvc repro points pseudomasks."""
    from lstemplate import copy_template

    data = copy_template(ls_template, project / ".ls-data").data_dir
    up = _nucleate(["ls", "up", "--data-dir", data], project)
    assert "running at http://127.0.0.1:" in up.stdout
    try:
        push = _nucleate(["ls", "push", "--data-dir", data], project)
        assert "5 new task(s) in round 1" in push.stdout, push.stdout + push.stderr
        assert read_table("inflight", project / "storage" / "inflight.parquet").num_rows == 5
        sim = _nucleate(["annotate-sim", "--points", "storage/sample/points.parquet", "--data-dir", data], project)
        assert "5 task(s) annotated" in sim.stdout, sim.stdout + sim.stderr
        pull = _nucleate(["ls", "pull", "--data-dir", data], project)
        assert "round 1: 5 task(s), 5 finished" in pull.stdout, pull.stdout + pull.stderr
    finally:
        _nucleate(["ls", "down", "--data-dir", data], project, check=False)
    assert read_table("inflight", project / "storage" / "inflight.parquet").num_rows == 0
    export = project / "storage" / "annotations" / "round-001" / "export.json"
    assert export.is_file() and oct(export.stat().st_mode & 0o777) == "0o600"

    repro = _run([sys.executable, "-m", "dvc", "repro", "points", "pseudomasks"], project)
    assert "Running stage 'points'" in repro.stdout and "Running stage 'pseudomasks'" in repro.stdout
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    (dep,) = [d for d in lock["points"]["deps"] if d["path"] == "storage/annotations"]
    assert dep["md5"].endswith(".dir") and dep["nfiles"] == 4  # README + round-001's three files
    assert any(d["path"] == "storage/consensus.parquet" for d in lock["pseudomasks"]["deps"])
    selected = set(read_table("selection", project / "storage" / "selection.parquet").column("image_id").to_pylist())
    points = read_table("points", project / "storage" / "points.parquet")
    assert set(points.column("image_id").to_pylist()) <= selected and points.num_rows > 100
    index = read_table("pseudomask_index", project / "storage" / "pseudomasks" / "index.parquet")
    assert set(index.column("image_id").to_pylist()) == selected
    status = _run([sys.executable, "-m", "dvc", "status", "points", "pseudomasks"], project)
    assert "up to date" in status.stdout

    # the next round's selection leaves the annotated images out and counts on
    _run([sys.executable, "-m", "dvc", "repro", "select"], project)
    nxt = read_table("selection", project / "storage" / "selection.parquet")
    assert set(nxt.column("round").to_pylist()) == {2} and not selected & set(nxt.column("image_id").to_pylist())


TINY_TRAINING = {"model": {"width": 8}, "train": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 2, "patch_px": 64,
                                                  "kd_unlabeled": 1, "val_every": 1, "threads": 1}}


def test_repro_train_predict_evaluate_after_the_round(project):
    """dvc repro evaluate after round 1: train -> predict -> evaluate run from the round's points (tiny settings)."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in TINY_TRAINING.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    repro = _run([sys.executable, "-m", "dvc", "repro", "evaluate"], project, check=False)
    out = repro.stdout + repro.stderr
    assert repro.returncode == 0, out[-4000:]
    for stage in ("train", "predict", "evaluate"):
        assert f"Running stage '{stage}'" in out, out[-3000:]
    model = project / "storage" / "model"
    assert {"student.pt", "student.json", "model_card.json", "training.csv"} <= {p.name for p in model.iterdir()}
    card = json.loads((model / "model_card.json").read_text())
    assert card["round"] == 1 and card["images"] == 5 and card["points"] > 100 and card["supervision"] == "donuseg"
    assert read_table("student_probs", project / "storage" / "student_probs.parquet").num_rows == 30
    assert read_table("student_features", project / "storage" / "student_features.parquet").num_rows == 30
    metrics = json.loads((project / "storage" / "metrics.json").read_text())
    assert set(metrics["splits"]) == {"gold", "test"} and metrics["splits"]["test"]["n_images"] == 16
    curve = (project / "storage" / "plots" / "learning_curve.csv").read_text().splitlines()
    assert len(curve) == 2 and curve[1].startswith("1,5,")
    status = _run([sys.executable, "-m", "dvc", "status", "train", "predict", "evaluate"], project)
    assert "up to date" in status.stdout
