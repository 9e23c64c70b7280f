"""DESIGN.md layering, checked by importing every module in a fresh interpreter:

1. the pure core (``src/nucleate``) imports neither ``tasks`` nor ``flows``, nor Prefect, DVC or the
   Label Studio SDK (nor reads orchestration state);
2. ``tasks`` (the stages) import no ``flows`` module, nor Prefect or the Label Studio SDK;
3. only ``flows`` touches Prefect and the Label Studio client.
"""

import json
import pkgutil
import subprocess
import sys

import pytest

import flows
import nucleate
import tasks


def _modules(package, prefix: str) -> list[str]:
    return [m.name for m in pkgutil.walk_packages(package.__path__, prefix)]


def _loaded_after_import(modules: list[str], roots: tuple[str, ...]) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] in {roots!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


RULES = {
    "core": (nucleate, "nucleate.", ("tasks", "flows", "prefect", "dvc", "label_studio_sdk")),
    "tasks": (tasks, "tasks.", ("flows", "prefect", "label_studio_sdk")),
}


@pytest.mark.parametrize("layer", sorted(RULES))
def test_layer_imports_nothing_above_it(layer):
    package, prefix, forbidden = RULES[layer]
    modules = _modules(package, prefix)
    assert modules, f"no modules found in {prefix}"
    assert _loaded_after_import(modules, forbidden) == []


def test_the_rules_can_fail():
    """The probe sees an upward import: flows imports tasks (allowed there, forbidden below it)."""
    assert "tasks" in {m.split(".")[0] for m in _loaded_after_import(["flows.cli"], ("tasks",))}
    assert _modules(flows, "flows.")
