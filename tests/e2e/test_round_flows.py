"""Rounds as Prefect flows, end to end, with real servers: a project made by ``nucleate init`` (git + DVC in a temp
folder, a local DVC remote), a real Label Studio, a real Prefect server (``prefect server start``).

* round 1 by hand (the flows called directly): open -> a second open is refused -> simulated annotator -> close ->
  tag ``round-001``, report, ``dvc push``;
* round 2 as users run it: ``nucleate serve`` serves the deployments, the open-round deployment runs, pushes with
  the round-1 student's pre-annotations and *suspends*; the simulated annotator finishes; the watcher (a 3-second
  schedule) resumes it and the resumed run closes the round (tag ``round-002``);
* ``nucleate round checkout 1`` brings round 1's model back;
* the crash matrix: in a second project, a failure injected after every step of a round in turn, and the process
  killed during training; each rerun continues; the final round equals the uninterrupted round 1 (points, masks,
  weights, metrics), with no duplicate Label Studio task and a clean ``dvc status``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from lstemplate import copy_template

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

#: a student small enough for a test round in well under a minute on one core
TINY = {"select": {"budget": 3},
        "model": {"width": 8, "nucleus_radius_px": 5.0},
        "train": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 2, "patch_px": 64, "kd_unlabeled": 1,
                  "val_every": 0, "threads": 1},
        "donuseg": {"start_epoch": 1, "refresh_epochs": 1}}
ANNOTATOR = "sim-1@nucleate.local"
NUCLEATE = str(Path(sys.executable).with_name("nucleate"))


def _wait(what: str, check, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def servers(ls_template, copy_prefect_home, tmp_path_factory):
    """A Label Studio and a Prefect server for the module; the environment points the flows at both."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.local_service import free_port
    from flows.prefect_server import PrefectServer


    base = tmp_path_factory.mktemp("servers")
    ls = copy_template(ls_template, base / "ls-data")
    prefect = PrefectServer(copy_prefect_home(base / "prefect"))
    ls.up()
    prefect.up(port=free_port(), timeout=180)
    env = {"NUCLEATE_LS_URL": ls.state()["url"], "NUCLEATE_LS_TOKEN": ls.credentials()["token"],
           "NUCLEATE_LS_FILES_ROOT": str(ls.files_root.resolve()), "PREFECT_API_URL": prefect.api_url}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect.api_url}):
            yield {"ls": ls, "prefect": prefect, "env": env}
            # send what Prefect's background workers still hold while the server is up: left for later, they
            # would keep retrying a stopped server (and hold up the next Prefect test harness)
            APILogWorker.drain_all(timeout=30, at_exit=False)
            EventsWorker.drain_all(timeout=30, at_exit=False)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        prefect.down()
        ls.down()


def _make_project(path: Path, sample_dir: Path, teacher_csv: Path, title: str) -> Path:
    from flows.project import init_project

    init_project(path, images=sample_dir / "images", gold_masks=sample_dir / "masks")
    params = yaml.safe_load((path / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    params["teacher"].update(backend="file", model=str(teacher_csv))
    params["labelstudio"]["project_title"] = title
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _annotate(project: Path, round_no: int, sample_dir: Path):
    from flows.annotate_sim import annotate_sim
    from flows.rounds import Project
    from nucleate.io import read_table

    proj = Project.load(project)
    gt = read_table("points", sample_dir / "points.parquet")
    with proj.adapter() as adapter:
        pid = adapter.find_project(proj.params.labelstudio.project_title)
        return annotate_sim(adapter, pid, gt, annotator=ANNOTATOR, params=proj.params.labelstudio,
                            seed=proj.params.seed, rounds=[round_no], labels=proj.params.labels)


def _tasks(project: Path) -> list[dict]:
    from flows.rounds import Project

    proj = Project.load(project)
    with proj.adapter() as adapter:
        return adapter.tasks(adapter.find_project(proj.params.labelstudio.project_title))


def _git(project: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=project, check=True, capture_output=True, text=True).stdout.strip()


def _dvc_status(project: Path, *stages: str) -> str:
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    return subprocess.run([sys.executable, "-m", "dvc", "status", *stages], cwd=project, env=env, check=True,
                          capture_output=True, text=True).stdout


def _round_outputs(project: Path) -> dict:
    """What a closed round produced, minus what legitimately differs between two runs (ids, times)."""
    import torch

    from nucleate.io import read_table

    storage = project / "storage"
    points = read_table("points", storage / "points.parquet").select(["image_id", "x", "y", "label"])
    index = read_table("pseudomask_index", storage / "pseudomasks" / "index.parquet")
    masks = {p.relative_to(storage / "pseudomasks").as_posix(): _digest(p)
             for p in sorted((storage / "pseudomasks").rglob("*.tif"))}
    state = torch.load(storage / "model" / "student.pt", map_location="cpu", weights_only=False)
    weights = state.get("state_dict", state) if isinstance(state, dict) else state
    digest = hashlib.sha256()
    for name in sorted(k for k in weights if isinstance(weights[k], torch.Tensor)):
        digest.update(name.encode() + weights[name].numpy().tobytes())
    metrics = json.loads((storage / "metrics.json").read_text())["splits"]
    return {"points": points.sort_by([("image_id", "ascending"), ("x", "ascending"), ("y", "ascending")]),
            "images": sorted(index.column("image_id").to_pylist()), "masks": masks,
            "weights": digest.hexdigest(), "metrics": {s: {k: v for k, v in m.items() if k != "images"}
                                                       for s, m in metrics.items()}}


@pytest.fixture(scope="module")
def lab(servers, sample_dir, teacher_csv, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("lab")
    return {"project": _make_project(root / "lab", sample_dir, teacher_csv, "e2e lab"), "round1": None}


def test_round_one_by_hand(lab, sample_dir):
    from flows.rounds import RoundBusy, close_round, open_round, read_ledger
    from nucleate.io import Layout

    project = lab["project"]
    opened = open_round(str(project), wait=False)
    assert opened["round"] == 1 and opened["tasks"] == 3
    with pytest.raises(RoundBusy, match="round 1 is already open"):
        open_round(str(project), wait=False)
    sim = _annotate(project, 1, sample_dir)
    assert len(sim.annotated) == 3
    closed = close_round(str(project))
    assert closed["round"] == 1 and set(closed["test"]) == {"dice", "aji", "pq"}
    assert "round-001" in _git(project, "tag")
    assert read_ledger(Layout(project / "storage")) is None
    report = (project / "storage" / "reports" / "round-001.md").read_text()
    assert "round 1" in report.lower()
    assert not _git(project, "status", "--porcelain", "--untracked-files=no")
    assert "up to date" in _dvc_status(project, "points", "pseudomasks", "train", "predict", "evaluate")
    assert any((project.parent / "lab-dvc-remote").rglob("*")), "dvc push sent nothing to the local remote"
    lab["round1"] = _round_outputs(project)
    lab["model1"] = _digest(project / "storage" / "model" / "student.pt")


def test_round_two_served_suspended_and_resumed_by_the_watcher(lab, servers, sample_dir):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from flows.rounds import read_ledger
    from nucleate.io import Layout

    project = lab["project"]
    assert lab["round1"] is not None, "round 1 did not close"
    env = {**os.environ, **servers["env"]}
    log = open(project.parent / "serve.log", "w")  # noqa: SIM115
    serve = subprocess.Popen([NUCLEATE, "serve", "--project", str(project), "--interval", "3"], cwd=project, env=env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def deployed():
            with get_client(sync_client=True) as client:
                return any(d.name == project.name for d in client.read_deployments())
        _wait("the deployments to be served", deployed, 120)
        run = run_deployment(f"open-round/{project.name}", timeout=0)
        layout = Layout(project / "storage")

        def suspended():
            ledger = read_ledger(layout)
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(run.id).state
            assert state.type.name not in {"FAILED", "CRASHED"}, (project.parent / "serve.log").read_text()[-3000:]
            return ledger and ledger["round"] == 2 and ledger["status"] == "pushed" and state.name == "Suspended"
        _wait("open-round to push round 2 and suspend", suspended, 240)
        from flows.rounds import Project

        with Project.load(project).adapter() as adapter:  # pre-annotations: the round-1 student's points
            second = [t for t in _tasks(project) if t["data"]["round"] == 2]
            assert len(second) == 3 and any(adapter.predictions_of(t["id"]) for t in second)
        sim = _annotate(project, 2, sample_dir)
        assert len(sim.annotated) == 3

        def completed():
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(run.id).state
            assert state.type.name not in {"FAILED", "CRASHED"}, (project.parent / "serve.log").read_text()[-3000:]
            return state.type.name == "COMPLETED"
        _wait("the watcher to resume the round and the round to close", completed, 300)
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
        log.close()
    assert "round-002" in _git(project, "tag")
    report = (project / "storage" / "reports" / "round-002.md").read_text()
    assert "pre-annotation" in report.lower()


def test_checkout_round_one_brings_its_model_back(lab):
    project = lab["project"]
    assert _digest(project / "storage" / "model" / "student.pt") != lab["model1"]
    out = subprocess.run([NUCLEATE, "round", "checkout", "1", "--project", str(project)], cwd=project,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert _digest(project / "storage" / "model" / "student.pt") == lab["model1"]
    _git(project, "checkout", "-q", "-")
    subprocess.run([sys.executable, "-m", "dvc", "checkout", "-q"], cwd=project, check=True,
                   env={**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]})


OPEN_STEPS = ("ingest", "teacher", "select", "preannotate", "push")
CLOSE_STEPS = ("pull", "track", "points", "pseudomasks", "train", "predict", "evaluate", "report", "commit", "tag",
               "dvc_push")


def test_crash_after_each_step_then_rerun_gives_the_uninterrupted_round(lab, servers, sample_dir, teacher_csv,
                                                                          tmp_path, monkeypatch):
    from flows.rounds import FAULT_ENV, InjectedFault, close_round, open_round

    assert lab["round1"] is not None, "the uninterrupted round 1 did not close"
    project = _make_project(tmp_path / "crashy", sample_dir, teacher_csv, "e2e crashy")
    for step in OPEN_STEPS:
        monkeypatch.setenv(FAULT_ENV, step)
        with pytest.raises(InjectedFault):
            open_round(str(project), wait=False)
    monkeypatch.delenv(FAULT_ENV)
    assert open_round(str(project), wait=False)["round"] == 1
    tasks = _tasks(project)
    assert len(tasks) == 3 and len({t["data"]["image_id"] for t in tasks}) == 3
    _annotate(project, 1, sample_dir)

    # killed mid-step: the close process (and its dvc / training children) dies while the student trains
    env = {**os.environ, **servers["env"]}
    proc = subprocess.Popen([NUCLEATE, "round", "close", "--project", str(project)], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait("training to start", lambda: (project / "storage" / "checkpoints").exists() or proc.poll() is not None,
              240, every=0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)

    for step in CLOSE_STEPS:
        monkeypatch.setenv(FAULT_ENV, step)
        with pytest.raises(InjectedFault):
            close_round(str(project))
    monkeypatch.delenv(FAULT_ENV)
    assert close_round(str(project))["status"] == "closed"

    assert _git(project, "tag") == "round-001"
    tasks = _tasks(project)
    assert len(tasks) == 3 and len({t["data"]["image_id"] for t in tasks}) == 3
    assert sum(len(t.get("annotations") or []) or t.get("total_annotations", 0) for t in tasks) == 3
    assert "up to date" in _dvc_status(project, "points", "pseudomasks", "train", "predict", "evaluate")
    assert not _git(project, "status", "--porcelain", "--untracked-files=no")
    got, want = _round_outputs(project), lab["round1"]
    assert got["points"].equals(want["points"]) and got["points"].num_rows > 50
    assert got["images"] == want["images"] and got["masks"] == want["masks"]
    assert got["weights"] == want["weights"]
    assert got["metrics"] == want["metrics"]
    assert isinstance(got["points"], pa.Table)
    shutil.rmtree(tmp_path / "crashy-dvc-remote", ignore_errors=True)
