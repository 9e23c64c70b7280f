"""flows.project (`nucleate init`): a lab's own project is a clean git + DVC repository whose pipeline runs the
installed nucleate (no code deps), whose round exports can be `dvc add`-ed while they are the `points` stage's
dep, and a non-empty folder is refused in one line with nothing written."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows import lineage
from flows.cli import app
from flows.project import CODE_DIRS, ProjectError, init_project, project_dvc_yaml, template_text

REPO = Path(__file__).resolve().parents[2]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def project(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lab") / "nuclei-lab"
    result = CliRunner().invoke(app, ["init", str(root), "--images", str(sample_dir / "images"),
                                      "--gold-masks", str(sample_dir / "masks")])
    assert result.exit_code == 0, result.output
    assert f"created nucleate project {root}" in result.output
    return root


def test_init_makes_a_clean_committed_project(project, sample_dir):
    assert lineage.is_repo(project)
    assert _git(project, "status", "--porcelain") == ""
    assert _git(project, "log", "--format=%s").startswith("nucleate init: new project")
    tracked = set(_git(project, "ls-files").splitlines())
    assert {"dvc.yaml", "params.yaml", "README.md", ".gitignore", ".dvc/config", ".dvcignore", "storage/.gitignore",
            "storage/annotations/README.md"} <= tracked
    config = (project / ".dvc" / "config").read_text()
    for line in ("analytics = false", "check_update = false", "autostage = true", "remote = storage"):
        assert line in config
    assert lineage.default_remote(project) == "storage"
    assert (project.parent / "nuclei-lab-dvc-remote").is_dir()
    dvc = yaml.safe_load((project / "dvc.yaml").read_text())
    assert dvc["vars"] == [{"images": str(sample_dir / "images")}, {"gold_masks": str(sample_dir / "masks")}]
    deps = [d for stage in dvc["stages"].values() for d in stage.get("deps", [])]
    assert deps and not [d for d in deps if d.split("/")[0] in CODE_DIRS]
    # the lab's own images: every stage but sample_data
    assert set(dvc["stages"]) == set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]) - {"sample_data"}
    assert "prefect.yaml" in tracked and '- name: "nuclei-lab"' in (project / "prefect.yaml").read_text()
    assert (project / "params.yaml").read_text() == (REPO / "params.yaml").read_text()
    check = CliRunner().invoke(app, ["params", "check", str(project / "params.yaml")])
    assert check.exit_code == 0 and check.output.strip().endswith("params.yaml: ok"), check.output


def test_the_projects_pipeline_runs_the_installed_nucleate(project, line_log):
    """`dvc repro ingest` in the project: the stage runs `nucleate ingest` on the lab's (external) image folder."""
    assert lineage.repro("ingest", project, line_log) is True
    assert "Running stage 'ingest':" in line_log.lines and "Running stage 'sample_data':" not in line_log.lines
    from nucleate.io import read_table

    assert read_table("manifest", project / "storage" / "manifest.parquet").num_rows == 49
    assert lineage.repro("ingest", project) is False
    # dvc.lock + storage/.gitignore were auto-staged; a commit leaves the tree clean
    assert lineage.commit(project, [], "ingest") is not None and _git(project, "status", "--porcelain") == ""


def test_a_rounds_export_is_tracked_while_it_is_the_points_stages_dep(project):
    round_dir = project / "storage" / "annotations" / "round-001"
    round_dir.mkdir()
    (round_dir / "export.json").write_text("[]")
    assert _git(project, "status", "--porcelain") == ""  # the export folder itself: ignored by git
    assert lineage.track("storage/annotations/round-001", project) is True
    status = _git(project, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert status == ["A  storage/annotations/round-001.dvc"]  # committable (autostaged), the folder still ignored
    sha = lineage.commit_round(project, 1, ["storage/annotations/round-001.dvc"])
    assert sha and _git(project, "status", "--porcelain") == ""
    dvc = yaml.safe_load((project / "dvc.yaml").read_text())
    assert "storage/annotations" in dvc["stages"]["points"]["deps"]
    shown = lineage.dvc(["status", "points"], project)  # the dep sees the new round; the .dvc file is in the graph
    assert shown.returncode == 0 and "storage/annotations" in shown.stdout, shown.stdout


def test_init_refuses_a_non_empty_folder_in_one_line(tmp_path):
    target = tmp_path / "lab"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, ["init", str(target)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0] == f"error: {target}: folder is not empty; nucleate init makes a new " \
                                          "project in a new or empty folder"
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert not (tmp_path / "lab-dvc-remote").exists()
    with pytest.raises(ProjectError, match="--images .*missing: folder not found"):
        init_project(tmp_path / "other", images=tmp_path / "missing")
    assert not (tmp_path / "other").exists()


def test_project_dvc_yaml_drops_code_deps_and_keeps_the_rest():
    template = template_text("dvc.yaml")
    text = project_dvc_yaml(template, images="/data/lab images", gold_masks="gold_masks")
    data = yaml.safe_load(text)
    assert data["vars"] == [{"images": "/data/lab images"}, {"gold_masks": "gold_masks"}]
    assert "deps" not in data["stages"]["sample_data"]  # all its deps were code
    assert data["stages"]["ingest"]["deps"] == ["${images}"]
    assert "# manifest: one row per unique image" in text  # comments stay
    assert "tests/test_dvc_deps.py" not in text


def test_every_packaged_template_exists_in_the_checkout():
    """The wheel's force-include entries name real files, and template_text reads each one (editable install:
    from the checkout)."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert {"dvc.yaml", "params.yaml", "storage/.gitignore", "storage/annotations/README.md"} <= set(include)
    for source, target in include.items():
        assert target == f"flows/template/{source}"
        assert template_text(source) == (REPO / source).read_text()
    with pytest.raises(ProjectError, match="template nope.yaml not found"):
        template_text("nope.yaml")


def test_images_without_gold_masks_get_a_project_gold_masks_folder_and_the_given_remote(sample_dir, tmp_path,
                                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = init_project("lab", images=sample_dir / "images", remote="shared/remote")
    lab = tmp_path / "lab"
    dvc = yaml.safe_load((lab / "dvc.yaml").read_text())
    assert dvc["vars"] == [{"images": str(sample_dir / "images")}, {"gold_masks": "gold_masks"}]
    assert "gold_masks/README.md" in _git(lab, "ls-files").splitlines()  # the folder exists in every clone
    assert report.remote_url == str(tmp_path / "shared" / "remote") and (tmp_path / "shared" / "remote").is_dir()
    assert f"url = {tmp_path / 'shared' / 'remote'}" in (lab / ".dvc" / "config").read_text()
    assert _git(lab, "status", "--porcelain") == ""
