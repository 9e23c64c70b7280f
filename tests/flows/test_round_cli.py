"""`nucleate round ...` on bad input: one `error:` line, no traceback, no flow run, nothing written."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", [["open"], ["close"], ["watch"], ["status"], ["checkout", "1"]])
def test_not_a_project(tmp_path, command):
    result = runner.invoke(app, ["round", *command, "--project", str(tmp_path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: "), result.output
    assert "not a nucleate project" in lines[-1] or "not a git" in lines[-1], result.output
    assert "Traceback" not in result.output and list(tmp_path.iterdir()) == []


def test_bad_params_file_names_the_key(tmp_path, repo_root):
    shutil.copy(repo_root / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text((repo_root / "params.yaml").read_text().replace(
        "min_finished_fraction: 1.0", "min_finished_fraction: 1.5"))
    result = runner.invoke(app, ["round", "close", "--project", str(tmp_path)])
    assert result.exit_code == 1
    assert "rounds.min_finished_fraction" in result.output and "Traceback" not in result.output


def test_status_with_no_round_open(tmp_path, repo_root):
    shutil.copy(repo_root / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(repo_root / "params.yaml", tmp_path / "params.yaml")
    result = runner.invoke(app, ["round", "status", "--project", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "closed rounds: none" in result.output and "no round is open" in result.output
