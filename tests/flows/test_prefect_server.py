"""flows.prefect_server and `nucleate prefect up | status | down`: a real `prefect server start` in a temp
PREFECT_HOME, its state file, the export line, and the errors that name the log."""

from __future__ import annotations

import json
import os
import socket

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.local_service import http_ok
from flows.prefect_server import PrefectServer, PrefectServerError, find_prefect_bin


def _cli(args, home):
    result = CliRunner().invoke(app, ["prefect", *args, "--home", str(home)], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_a_server_that_exits_at_once_is_one_error_naming_its_log(tmp_path):
    fake = tmp_path / "prefect"
    fake.write_text("#!/bin/sh\necho \"sqlite3.OperationalError: unable to open database file\"\nexit 3\n")
    fake.chmod(0o755)
    server = PrefectServer(tmp_path / "home")
    with pytest.raises(PrefectServerError) as err:
        server.up(prefect_bin=fake, timeout=30, log=lambda line: None)
    text = str(err.value)
    assert text.startswith("the Prefect server exited with code 3 before http://127.0.0.1:")
    assert f"last lines of {server.log_path}" in text and "unable to open database file" in text
    log = server.log_path.read_text()
    assert f"{fake} server start --host 127.0.0.1 --port" in log and "--analytics-off" in log  # what was run
    assert server.state() is None and not server.state_path.exists()


def test_a_taken_port_is_refused_before_starting(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PrefectServerError, match=f"port {port} on 127.0.0.1 is taken"):
            PrefectServer(tmp_path / "home").up(port=port, prefect_bin=tmp_path / "never-run")
    assert not (tmp_path / "home").exists()


def test_status_and_down_when_nothing_runs(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    # a state file left by a server that died, whose pid is now another process (this one): not "running"
    (home / "server.json").write_text(json.dumps({"url": "http://127.0.0.1:1", "api_url": "http://127.0.0.1:1/api",
                                                  "port": 1, "pid": os.getpid()}))
    assert PrefectServer(home).state() is None
    code, out, err = _cli(["status"], home)
    assert code == 1 and out == "" and err.strip() == (
        f"Prefect server is not running (PREFECT_HOME {home}); start it with `nucleate prefect up`")
    code, out, _ = _cli(["down"], home)
    assert code == 0 and out.strip() == f"Prefect server was not running (PREFECT_HOME {home})"
    assert not (home / "server.json").exists()                           # the stale state is gone


@pytest.mark.slow
def test_up_status_down_round_trip(copy_prefect_home, tmp_path):
    from flows.local_service import free_port

    home = copy_prefect_home(tmp_path / "home")
    port = free_port()
    code, out, err = _cli(["up", "--port", str(port)], home)
    try:
        assert code == 0, err
        url = f"http://127.0.0.1:{port}"
        assert out == f"export PREFECT_API_URL={url}/api\n"                 # stdout: only the line to eval
        assert f"Prefect server running at {url}" in err and f"UI: {url}" in err and str(home / "server.log") in err
        state = PrefectServer(home).state()
        assert state["api_url"] == f"{url}/api" and PrefectServer(home).api_url == f"{url}/api"
        assert http_ok(f"{url}/api/health")
        cmdline = open(f"/proc/{state['pid']}/cmdline", "rb").read().decode().split("\0")
        assert cmdline[-9:] == [str(find_prefect_bin()), "server", "start", "--host", "127.0.0.1", "--port",
                                str(port), "--analytics-off", ""]                # what Prefect users run
        assert (home / "prefect.db").exists()                              # SQLite under PREFECT_HOME

        code, out, err = _cli(["status"], home)
        assert code == 0 and out == f"export PREFECT_API_URL={url}/api\n" and "healthy" in err
        code, out, _ = _cli(["up"], home)                                  # already running: the same server
        assert code == 0 and PrefectServer(home).state()["pid"] == state["pid"]
    finally:
        code, out, _ = _cli(["down"], home)
    assert code == 0 and out.strip() == "Prefect server stopped"
    assert not http_ok(f"{url}/api/health") and not os.path.exists(f"/proc/{state['pid']}")
    assert _cli(["status"], home)[0] == 1

