"""Shared fixtures. Tests run offline with telemetry off; nothing here touches the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from logcapture import LineLog

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real mnfinder sample layout (images, masks, ground-truth points), built once per session."""
    from tasks import sample_data

    out = tmp_path_factory.mktemp("sample") / "sample"
    sample_data.run(out=out, install=False)
    return out


@pytest.fixture
def line_log() -> LineLog:
    """A fresh :class:`LineLog`."""
    return LineLog()
