"""Real Label Studio servers for the flow tests: every test that needs a server copies the session's
initialised data dir (``ls_template``, tests/conftest.py) and starts its own ``label-studio`` on a free
127.0.0.1 port through :class:`flows.ls_server.LocalServer` (a few seconds), and stops it by PID afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lstemplate import copy_template

from flows.ls_server import LocalServer


@pytest.fixture
def ls_data(ls_template: Path, tmp_path: Path) -> Path:
    """A copy of the initialised template data dir (no server running)."""
    return copy_template(ls_template, tmp_path / "ls-data").data_dir


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The session's S3 server (``s3_server``) in AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY;
    ask for it before ``ls_server``, which then inherits them (and reaches the S3 API on 127.0.0.1)."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


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
    from flows.ls_client import Adapter
    from flows.ls_connection import resolve_connection

    conn = resolve_connection(ls_server.data_dir, env={})
    with Adapter(conn, retries=2, backoff_s=0.2, batch_size=50) as adapter:
        yield adapter



class Rounds:
    """Helpers of the flow tests: the sample ``manifest`` and ground truth ``gt``, image picking, pushing."""

    labels = ("nucleus", "micronucleus")  # params ``labels`` of the test projects
    title = "nucleate test"

    def __init__(self, manifest, gt):
        self.manifest, self.gt = manifest, gt
        self.sizes = {r["image_id"]: (r["width"], r["height"]) for r in manifest.to_pylist()}

    def pick(self, n: int, square: bool | None = False) -> list[str]:
        """The first ``n`` image ids (non-square ones by default, so x/y mix-ups show)."""
        rows = self.manifest.to_pylist()
        if square is not None:
            rows = [r for r in rows if (r["width"] == r["height"]) == square]
        return [r["image_id"] for r in rows[:n]]

    def project(self, adapter, model_version=None) -> int:
        pid = adapter.ensure_project(self.title, self.labels, model_version=model_version)
        adapter.ensure_storage(pid, adapter.conn.files_root / "images")
        return pid

    def push(self, adapter, ids, round=1, predictions=None, model_version=None, inflight=None):
        """``(project id, PushReport)`` of :func:`flows.ls_push.push` of ``ids`` (display PNGs rendered)."""
        from flows.ls_push import push, render_images
        from nucleate.config import LabelStudioParams

        pid = self.project(adapter, model_version)
        records = render_images(self.manifest, ids, adapter.conn.files_root)
        return pid, push(adapter, pid, [records[i] for i in ids], round=round, labels=self.labels,
                         marker_pct=LabelStudioParams().point_radius_pct, predictions=predictions,
                         model_version=model_version, inflight=inflight)


@pytest.fixture
def rounds(sample_manifest) -> Rounds:
    return Rounds(*sample_manifest)
