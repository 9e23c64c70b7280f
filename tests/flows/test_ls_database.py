"""flows.ls_database: Label Studio's PostgreSQL settings read as Label Studio reads them, and the check's one line
when nothing answers (no cluster needed; the PostgreSQL server itself: tests/flows/test_ls_postgres.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.local_service import free_port
from flows.ls_database import DatabaseError, PostgresSettings, check_postgres, postgres_from_env
from flows.ls_server import find_ls_bin


def test_settings_come_from_label_studios_variables():
    assert postgres_from_env({}) is None and postgres_from_env({"DJANGO_DB": "sqlite"}) is None
    pg = postgres_from_env({"DJANGO_DB": "default", "POSTGRE_HOST": "db.lab", "POSTGRE_PORT": "6543",
                            "POSTGRE_NAME": "ls", "POSTGRE_USER": "anno", "POSTGRE_PASSWORD": "pw"})
    assert pg == PostgresSettings("db.lab", 6543, "ls", "anno") and pg.where == "db.lab:6543/ls"
    assert "pw" not in repr(pg) and "password" not in pg.identity()
    # Label Studio's defaults, and its LABEL_STUDIO_ prefix winning over the plain name
    assert postgres_from_env({"DJANGO_DB": "postgresql"}) == PostgresSettings("localhost", 5432, "postgres", "postgres")
    assert postgres_from_env({"LABEL_STUDIO_DJANGO_DB": "default", "LABEL_STUDIO_POSTGRE_NAME": "a",
                              "POSTGRE_NAME": "b"}).name == "a"
    with pytest.raises(DatabaseError, match="POSTGRE_PORT='x' is not a port number"):
        postgres_from_env({"DJANGO_DB": "default", "POSTGRE_PORT": "x"})
    with pytest.raises(DatabaseError, match="DJANGO_DB='mysql' is not supported"):
        postgres_from_env({"DJANGO_DB": "mysql"})


def test_nothing_listening_is_one_line_naming_the_database_without_the_password(tmp_path):
    port = free_port()
    secret = "s3cret-Pw-91x"
    env = {"DJANGO_DB": "default", "POSTGRE_HOST": "127.0.0.1", "POSTGRE_PORT": str(port), "POSTGRE_NAME": "ls",
           "POSTGRE_USER": "anno", "POSTGRE_PASSWORD": secret}
    with pytest.raises(DatabaseError) as err:
        check_postgres(postgres_from_env(env), find_ls_bin().parent / "python", env)
    msg = str(err.value)
    assert msg.startswith(f"PostgreSQL at 127.0.0.1:{port}/ls is not reachable (Connection refused)")
    assert "\n" not in msg
    assert "POSTGRE_HOST" in msg and msg.endswith("nothing was changed") and secret not in msg

    # `nucleate ls up`: the same line, exit 1, nothing started or written
    data = tmp_path / "ls-data"
    result = CliRunner().invoke(app, ["ls", "up", "--data-dir", str(data)], env=env, catch_exceptions=False)
    assert result.exit_code == 1 and result.output.strip().splitlines() == [f"error: {msg}"]
    assert not (data / "server.json").exists() and not (data / "credentials.json").exists()


def test_several_workers_need_postgres(tmp_path):
    result = CliRunner().invoke(app, ["ls", "up", "--data-dir", str(tmp_path / "d"), "--workers", "2"],
                                env={"DJANGO_DB": "sqlite"}, catch_exceptions=False)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "--workers 2 needs PostgreSQL" in lines[0]
    assert not (tmp_path / "d").exists()
