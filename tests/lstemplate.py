"""Copying the session's initialised Label Studio data dir (imported by name: pytest puts tests/ on sys.path)."""

import shutil
from pathlib import Path

from flows.ls_server import LocalServer


def copy_template(template: Path, dest: Path) -> LocalServer:
    """A :class:`LocalServer` on a copy of ``template`` at ``dest`` (no server running, no old state)."""
    shutil.copytree(template, dest)
    (dest / "server.json").unlink(missing_ok=True)
    (dest / "server.log").unlink(missing_ok=True)
    return LocalServer(dest)
