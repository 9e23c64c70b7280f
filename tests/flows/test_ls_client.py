"""flows.ls_client and flows.ls_connection: retries, error mapping, and the token never showing."""

from __future__ import annotations

import json
import logging
import socket

import pytest

from flows.ls_client import Adapter
from flows.ls_connection import (
    Connection,
    LabelStudioError,
    Secret,
    ServerUnreachable,
    TokenRejected,
    resolve_connection,
)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_retried_with_backoff_then_one_clear_error():
    url = f"http://127.0.0.1:{_closed_port()}"
    waits: list[float] = []
    with Adapter(Connection(url, Secret("not-a-real-token-123")), retries=3, backoff_s=0.5,
                 sleep=waits.append) as adapter:
        with pytest.raises(ServerUnreachable) as err:
            adapter.progress(1)
    assert waits == [0.5, 1.0, 2.0]
    msg = str(err.value)
    assert url in msg and "tried 4 times" in msg and "nucleate ls up" in msg
    assert "not-a-real-token-123" not in msg and "not-a-real-token-123" not in repr(adapter)


def test_missing_local_server_and_missing_token_say_what_to_do(tmp_path):
    with pytest.raises(ServerUnreachable, match="nucleate ls up"):
        resolve_connection(tmp_path / "none", env={})
    with pytest.raises(TokenRejected, match="NUCLEATE_LS_TOKEN is not set"):
        resolve_connection(tmp_path, env={"NUCLEATE_LS_URL": "http://127.0.0.1:1"})
    conn = resolve_connection(tmp_path, env={"NUCLEATE_LS_URL": "http://h:1/", "NUCLEATE_LS_TOKEN": "abcsecret",
                                             "NUCLEATE_LS_FILES_ROOT": str(tmp_path)})
    assert conn.url == "http://h:1" and conn.files_root == tmp_path
    assert "abcsecret" not in repr(conn) and "abcsecret" not in str(conn.token)


@pytest.mark.slow
def test_rejected_token_and_the_token_never_shows(ls_server, rounds, tmp_path, caplog, capfd):
    from flows.ls_pull import pull

    conn = resolve_connection(ls_server.data_dir, env={})
    token = conn.token.reveal()
    caplog.set_level(logging.DEBUG)
    with Adapter(Connection(conn.url, Secret("wrong-token-0123456789"), conn.files_root), retries=0) as bad:
        with pytest.raises(TokenRejected) as err:
            bad.whoami()
    msg = str(err.value)
    assert "rejected the token (HTTP 401" in msg and conn.url in msg and "NUCLEATE_LS_TOKEN" in msg
    assert "wrong-token-0123456789" not in msg

    # a whole push / pull at DEBUG logging: the real token appears in no log line, error, repr or saved file
    with Adapter(conn, retries=0) as good:
        pid, _ = rounds.push(good, rounds.pick(1), inflight=tmp_path / "inflight.parquet")
        pull(good, pid, annotations=tmp_path / "annotations", inflight=tmp_path / "inflight.parquet")
        with pytest.raises(LabelStudioError) as err2:
            good.annotate(10**9, [])                             # no such task: an HTTP error from the server
    out, errout = capfd.readouterr()
    server_log = ls_server.log_path.read_text(errors="replace")
    saved = [p.read_text() for p in (tmp_path / "annotations" / "round-001").iterdir()]
    for text in (caplog.text, out, errout, str(err2.value), repr(good), repr(conn), str(conn), server_log, *saved):
        assert token not in text
    assert json.loads((tmp_path / "annotations" / "round-001" / "server.json").read_text())["url"] == conn.url
