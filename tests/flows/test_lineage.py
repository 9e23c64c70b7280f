"""flows.lineage against real git + DVC in temp repos: repro (ran / not ran), a failing stage's one error line,
dvc add, commits and round tags (idempotent, conflicting), push / pull through a local remote, and a round
brought back by checkout_round."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flows import lineage
from flows.lineage import LineageError

# stage `one` writes a file from params; `two` doubles it
DVC_YAML = f"""\
stages:
  one:
    cmd: {sys.executable} one.py
    params: [a]
    outs: [out/one.txt]
  two:
    cmd: {sys.executable} -c "open('out/two.txt', 'w').write(open('out/one.txt').read() * 2)"
    deps: [out/one.txt]
    outs: [out/two.txt]
"""
ONE_PY = "import yaml\nopen('out/one.txt', 'w').write(str(yaml.safe_load(open('params.yaml'))['a']))\n"
# a stage failing the way a nucleate stage does: some output, then one `error:` line and exit status 1
BAD_STAGE = f"""\
  bad:
    cmd: {sys.executable} bad.py
    outs: [out/bad.txt]
"""
BAD_PY = "import sys\nprint('working')\nsys.exit('error: in.txt: missing; make it with x')\n"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git + DVC repo with the 2-stage pipeline, committed, no remote."""
    root = tmp_path / "repo"
    root.mkdir()
    lineage.init_repo(root)
    lineage.configure(root, {"core.analytics": "false", "core.autostage": "true"})
    (root / "out").mkdir()
    (root / "out" / ".gitignore").write_text("")
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "one.py").write_text(ONE_PY)
    (root / "params.yaml").write_text("a: 1\n")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "pipeline")
    return root


def test_repro_runs_a_changed_stage_and_skips_an_unchanged_one(repo, line_log):
    assert lineage.repro("two", repo, line_log) is True
    assert (repo / "out" / "two.txt").read_text() == "11"
    assert "Running stage 'one':" in line_log.lines and "Running stage 'two':" in line_log.lines
    assert lineage.repro("two", repo) is False
    assert lineage.status_clean(repo) is True
    (repo / "params.yaml").write_text("a: 3\n")
    assert lineage.status_clean(repo) is False
    assert lineage.repro("two", repo) is True and (repo / "out" / "two.txt").read_text() == "33"


def test_a_failing_stage_surfaces_its_own_error_line(repo, line_log):
    (repo / "dvc.yaml").write_text(DVC_YAML + BAD_STAGE)
    (repo / "bad.py").write_text(BAD_PY)
    with pytest.raises(LineageError) as info:
        lineage.repro("bad", repo, line_log)
    message = str(info.value)
    assert message == "`dvc repro bad` failed: in.txt: missing; make it with x"
    assert "working" in line_log.lines  # the stage's output reached the logger as it ran
    with pytest.raises(LineageError, match=r"`dvc repro nope` failed in .*: ERROR: .*nope"):
        lineage.repro("nope", repo)


def test_commit_and_tag_a_round_idempotently_and_refuse_a_moved_tag(repo):
    lineage.repro("two", repo)
    (repo / "data").mkdir()
    (repo / "data" / "x.txt").write_text("x")
    assert lineage.track("data", repo) is True
    assert lineage.track("data", repo) is False  # unchanged: no-op
    sha = lineage.commit_round(repo, 1, ["data.dvc"])
    assert sha == _git(repo, "rev-parse", "HEAD")
    assert _git(repo, "status", "--porcelain") == ""  # dvc.lock and the .gitignore files dvc wrote went in too
    assert {"dvc.lock", "data.dvc", ".gitignore", "out/.gitignore"} <= set(
        _git(repo, "show", "--name-only", "--format=", "HEAD").splitlines())
    assert _git(repo, "log", "-1", "--format=%s") == "round-001: close round 1"
    assert lineage.commit_round(repo, 1, ["data.dvc"]) is None  # rerun: nothing staged, no empty commit
    assert lineage.tag_round(repo, 1) == "round-001"
    assert lineage.tag_round(repo, 1) == "round-001"  # already at HEAD: fine
    assert lineage.closed_rounds(repo) == [1]
    (repo / "params.yaml").write_text("a: 2\n")
    lineage.repro("two", repo)
    second = lineage.commit_round(repo, 2, [], "round 2")
    with pytest.raises(LineageError) as info:
        lineage.tag_round(repo, 1)
    assert f"tag round-001 already marks commit {sha[:12]}, not HEAD {second[:12]}" in str(info.value)
    assert "\n" not in str(info.value)
    lineage.tag_round(repo, 2)
    assert lineage.closed_rounds(repo) == [1, 2]
    assert lineage.round_tag(12) == "round-012"


def test_push_then_pull_brings_deleted_outs_back(repo, tmp_path, line_log):
    assert lineage.push(repo, line_log) is False
    assert any("no default DVC remote" in line and "dvc remote add -d" in line for line in line_log.lines)
    remote = tmp_path / "remote"
    assert lineage.ensure_remote(repo, str(remote)) == "storage"
    assert remote.is_dir() and lineage.default_remote(repo) == "storage"
    assert lineage.ensure_remote(repo, str(tmp_path / "other")) == "storage"  # one default remote: kept
    lineage.repro("two", repo)
    assert lineage.push(repo) is True
    shutil.rmtree(repo / ".dvc" / "cache")
    (repo / "out" / "one.txt").unlink()
    (repo / "out" / "two.txt").unlink()
    assert lineage.status_clean(repo) is False
    pulled = lineage.dvc(["pull"], repo)
    assert pulled.returncode == 0, pulled.stdout
    assert (repo / "out" / "two.txt").read_text() == "11" and lineage.status_clean(repo)


def test_checkout_round_brings_an_older_rounds_out_back(repo):
    for r, a in ((1, 5), (2, 7)):
        (repo / "params.yaml").write_text(f"a: {a}\n")
        lineage.repro("two", repo)
        lineage.commit_round(repo, r, [])
        lineage.tag_round(repo, r)
    assert (repo / "out" / "two.txt").read_text() == "77"
    lineage.checkout_round(repo, 1)
    assert (repo / "out" / "two.txt").read_text() == "55" and lineage.status_clean(repo)
    assert _git(repo, "rev-parse", "HEAD") == _git(repo, "rev-parse", "round-001^{commit}")
    with pytest.raises(LineageError, match=r"no tag round-003; closed rounds: 1, 2"):
        lineage.checkout_round(repo, 3)


def test_git_identity_falls_back_when_none_is_configured(repo, monkeypatch, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    for key, value in {"HOME": str(home), "XDG_CONFIG_HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"}.items():
        monkeypatch.setenv(key, value)
    (repo / "f.txt").write_text("f")
    assert lineage.commit_round(repo, 1, ["f.txt"])
    assert _git(repo, "log", "-1", "--format=%an <%ae>") == "nucleate <nucleate@localhost>"
    assert lineage.is_repo(repo) and not lineage.is_repo(repo / "out") and not lineage.is_repo(tmp_path)


def _s3_env(monkeypatch, s3, **overrides):
    for key, value in s3.env(**overrides).items():
        monkeypatch.setenv(key, value)


def test_a_closed_round_round_trips_through_an_s3_remote(repo, s3_server, monkeypatch, line_log):
    s3 = s3_server.client()
    s3.create_bucket(Bucket="nucleate-dvc")
    _s3_env(monkeypatch, s3_server)                        # endpoint + key from the environment only
    assert lineage.ensure_remote(repo, "s3://nucleate-dvc/lab/project") == "storage"
    lineage.repro("two", repo)
    lineage.commit_round(repo, 1, [])
    lineage.tag_round(repo, 1)
    outs = {name: (repo / "out" / name).read_bytes() for name in ("one.txt", "two.txt")}
    assert lineage.push(repo, line_log) is True
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="nucleate-dvc")["Contents"]]
    assert len(keys) == 2 and all(k.startswith("lab/project/files/md5/") for k in keys)
    shutil.rmtree(repo / ".dvc" / "cache")
    for name in outs:
        (repo / "out" / name).unlink()
    assert lineage.pull(repo, line_log) is True
    assert {name: (repo / "out" / name).read_bytes() for name in outs} == outs and lineage.status_clean(repo)
    config = "".join(p.read_text() for p in (repo / ".dvc").glob("config*"))
    assert "s3://nucleate-dvc/lab/project" in config
    assert s3_server.secret not in config + "\n".join(line_log.lines) + _git(repo, "log", "-p", "--all")


def test_wrong_s3_credentials_are_one_line_without_the_secret_and_lose_nothing(repo, s3_server, monkeypatch,
                                                                                line_log):
    s3_server.client().create_bucket(Bucket="nucleate-denied")
    wrong = "wrong" + s3_server.secret[5:]
    _s3_env(monkeypatch, s3_server, AWS_SECRET_ACCESS_KEY=wrong)
    lineage.ensure_remote(repo, "s3://nucleate-denied/p")
    lineage.repro("two", repo)
    before = (repo / "out" / "two.txt").read_bytes()
    for step in (lineage.push, lineage.pull):
        with pytest.raises(LineageError) as info:
            step(repo, line_log)
        message = str(info.value)
        assert "\n" not in message and "'storage'" in message and "AWS_SECRET_ACCESS_KEY" in message
        assert wrong not in message and s3_server.secret not in message
    assert wrong not in "\n".join(line_log.lines)
    assert (repo / "out" / "two.txt").read_bytes() == before and lineage.status_clean(repo)   # nothing lost
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket="nucleate-denied")
