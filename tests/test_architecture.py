"""DESIGN.md dependency rule: the pure core never imports Prefect, DVC or the Label Studio SDK."""

import json
import pkgutil
import subprocess
import sys

import nucleate

FORBIDDEN = ("prefect", "dvc", "label_studio_sdk")


def test_core_imports_no_orchestration_libraries():
    modules = [m.name for m in pkgutil.walk_packages(nucleate.__path__, "nucleate.")]
    assert "nucleate.config" in modules and "nucleate.io.tables" in modules
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in {FORBIDDEN!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_tasks_do_not_import_prefect():
    import tasks

    modules = [m.name for m in pkgutil.walk_packages(tasks.__path__, "tasks.")]
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in ('prefect', 'label_studio_sdk'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
