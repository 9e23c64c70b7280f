"""The `nucleate` console script: --help on every command, params check, error exit codes."""

import subprocess
import sys

import pytest
import typer.main
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def _commands(group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name)
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))


ALL = sorted(_commands(typer.main.get_command(app)))


def test_expected_commands_exist():
    assert {("ingest",), ("sample-data",), ("summary",), ("params", "check"), ("init",), ("serve",), ("demo",),
            ("round", "open"), ("round", "close"), ("round", "status"), ("round", "watch"), ("round", "checkout"),
            ("prefect", "up"), ("prefect", "down"), ("prefect", "status")} <= set(ALL)


@pytest.mark.parametrize("command", ALL, ids=" ".join)
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and len(result.output.splitlines()) > 3


def test_params_check_ok_and_bad(repo_root, tmp_path):
    assert runner.invoke(app, ["params", "check", str(repo_root / "params.yaml")]).exit_code == 0
    bad = tmp_path / "params.yaml"
    bad.write_text("select:\n  budgett: 3\n")
    result = runner.invoke(app, ["params", "check", str(bad)])
    assert result.exit_code == 1
    assert "select.budgett: unknown key; did you mean select.budget?" in result.output
    assert runner.invoke(app, ["params", "check", str(tmp_path / "none.yaml")]).exit_code == 1


def test_console_script_runs_ingest_with_clear_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "flows.cli", "ingest", str(tmp_path / "nope")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"error: {tmp_path / 'nope'}: image folder not found; ")
    assert len(result.stderr.strip().splitlines()) == 1
