"""dvc.yaml agrees with the code: paths are the storage layout's and the CLI defaults, deps cover every code
path a stage imports (so a change there re-runs the stage)."""

from __future__ import annotations

import inspect
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
import yaml

from flows.cli import app
from nucleate.io.layout import ARTIFACTS, LAYOUT

REPO = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())
VARS = {k: v for item in DVC.get("vars", []) for k, v in item.items()}
STAGES = DVC["stages"]
#: package markers every import passes through; they hold no stage logic
EXEMPT = {"src/nucleate/__init__.py", "tasks/__init__.py"}


def _subst(text: str) -> str:
    for key, value in VARS.items():
        text = text.replace("${" + key + "}", value)
    return text


def _entries(stage: dict, key: str) -> list[str]:
    out = []
    for item in stage.get(key, []):
        out.append(_subst(next(iter(item)) if isinstance(item, dict) else item))
    return out


def _argv(stage: dict, subst: bool = True) -> list[str]:
    cmd = stage["cmd"]
    text = " ".join(cmd) if isinstance(cmd, list) else cmd
    return shlex.split(_subst(text) if subst else text)


def _click_command(argv: list[str]):
    assert argv[0] == "nucleate", argv
    group, words = typer.main.get_command(app), argv[1:]
    while hasattr(group, "commands") and words and words[0] in group.commands:
        group, words = group.commands[words[0]], words[1:]
    return group


LAYOUT_PATHS = {str(LAYOUT.path(name)) for name in ARTIFACTS}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_storage_paths_are_layout_paths(name):
    stage = STAGES[name]
    paths = _entries(stage, "deps") + _entries(stage, "outs") + _entries(stage, "metrics")
    paths += [w for w in _argv(stage) if w.startswith("storage/")]
    for path in paths:
        if path.startswith("storage/"):
            assert any(path == p or path.startswith(p + "/") for p in LAYOUT_PATHS), (
                f"stage {name}: {path} is not a path of nucleate.io.layout.LAYOUT")


@pytest.mark.parametrize("name", sorted(STAGES))
def test_cmd_flags_equal_the_cli_defaults(name):
    """Running the stage's command with no flags reads and writes what dvc.yaml says (user data folders set by
    dvc.yaml's ``vars``, such as the images or gold masks, are the user's to point anywhere)."""
    argv = _argv(STAGES[name], subst=False)
    command = _click_command(argv)
    options = {opt: p for p in command.params for opt in p.opts}
    words = argv[1:]
    compared = 0
    for flag, value in zip(words, words[1:], strict=False):
        if flag.startswith("--") and value.startswith("storage/"):
            assert flag in options, f"stage {name}: `{flag}` is not an option of `{' '.join(argv[:2])}`"
            assert str(options[flag].default) == value, (
                f"stage {name}: dvc.yaml passes {flag} {value}, the CLI default is {options[flag].default}")
            compared += 1
    assert compared or name in ("ingest",) or not any(w.startswith("storage/") for w in words[2:])


def _imported_files(module: str) -> list[str]:
    code = ("import importlib, json, sys\n"
            f"importlib.import_module({module!r})\n"
            "print(json.dumps(sorted(getattr(m, '__file__', None) or '' for m in list(sys.modules.values()))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO)
    files = json.loads(out.stdout.strip().splitlines()[-1])
    repo = str(REPO) + "/"
    rel = (f[len(repo):] for f in files if f.startswith(repo))
    return sorted(f for f in rel if f.startswith(("src/", "tasks/", "flows/")))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STAGES))
def test_deps_name_every_code_path_the_stage_imports(name):
    stage = STAGES[name]
    module = _click_command(_argv(stage)).callback.__module__
    assert module.startswith("tasks."), f"stage {name} runs {module}, not a tasks/ module"
    deps = _entries(stage, "deps")
    imported = [f for f in _imported_files(module) if f not in EXEMPT]
    assert f"{module.replace('.', '/')}.py" in imported
    missing = sorted({f for f in imported if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)})
    assert not missing, f"stage {name}: dvc.yaml deps miss code it runs: {missing}"
    code_deps = [d for d in deps if d.startswith(("src/", "tasks/", "flows/"))]
    unused = [d for d in code_deps if not any(f == d or f.startswith(d.rstrip("/") + "/") for f in imported)]
    assert not unused, f"stage {name}: dvc.yaml deps name code the stage never imports: {unused}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_params_name_every_section_the_command_reads(name):
    """A params.yaml section the stage's command reads (``cfg.<section>``) is in the stage's ``params`` (whole, or
    some of its keys), so `dvc repro` re-runs the stage when it changes (e.g. ingest's ``slides``)."""
    source = inspect.getsource(_click_command(_argv(STAGES[name])).callback)
    used = set(re.findall(r"\bcfg\.(\w+)", source))
    listed = {str(next(iter(p)) if isinstance(p, dict) else p).split(".")[0] for p in STAGES[name].get("params", [])}
    assert used <= listed, f"stage {name}: dvc.yaml params miss {sorted(used - listed)}"
