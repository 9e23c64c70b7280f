"""Real Label Studio servers for tests.

``ls_template`` initialises one data dir per test session (migrations, admin user, token: 30-80 s)
by a first ``LocalServer.up`` (then stops it);
every test that needs a server copies it and starts its own ``label-studio`` on a free 127.0.0.1 port
through :class:`flows.ls_server.LocalServer` (a few seconds), and stops it by PID afterwards.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flows.ls_server import LocalServer, find_ls_bin


@pytest.fixture(scope="session")
def ls_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        ls_bin = find_ls_bin()
    except Exception as exc:  # a missing server must fail loudly, not skip
        pytest.fail(f"{exc}")
    template = tmp_path_factory.mktemp("ls_template") / "data"
    server = LocalServer(template)
    server.up(ls_bin=ls_bin)  # the first `up` initialises the data dir (what `nucleate ls up` does)
    assert server.down()
    return template


def copy_template(template: Path, dest: Path) -> LocalServer:
    shutil.copytree(template, dest)
    (dest / "server.json").unlink(missing_ok=True)
    (dest / "server.log").unlink(missing_ok=True)
    return LocalServer(dest)


@pytest.fixture
def ls_data(ls_template: Path, tmp_path: Path) -> Path:
    """A copy of the initialised template data dir (no server running)."""
    return copy_template(ls_template, tmp_path / "ls-data").data_dir


@pytest.fixture
def ls_server(ls_data: Path):
    """A running local server on a copy of the template; stopped (by PID) after the test."""
    server = LocalServer(ls_data)
    server.up()
    try:
        yield server
    finally:
        server.down()


@pytest.fixture
def ls_adapter(ls_server: LocalServer):
    from flows.labelstudio import Adapter, resolve_connection

    conn = resolve_connection(ls_server.data_dir, env={})
    return Adapter(conn, retries=2, backoff_s=0.2, batch_size=50)


@pytest.fixture(scope="session")
def sample_manifest(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(manifest table, ground-truth points table) of the real sample images."""
    from nucleate.io import read_table
    from tasks import ingest

    path = tmp_path_factory.mktemp("ls_manifest") / "manifest.parquet"
    ingest.run(sample_dir / "images", path, log=lambda line: None)
    return read_table("manifest", path), read_table("points", sample_dir / "points.parquet")
