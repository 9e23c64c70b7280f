"""Label Studio's database when it is PostgreSQL: settings from the environment and a one-line check.

Label Studio 1.23.2 reads its database from these variables (``core/settings/base.py`` and ``label_studio.py``;
each may also carry the prefix ``LABEL_STUDIO_``, which wins)::

    DJANGO_DB=default          # or postgresql; unset or sqlite: SQLite in the data dir
    POSTGRE_HOST=127.0.0.1     # Label Studio's default: localhost (a folder = a unix socket)
    POSTGRE_PORT=5432
    POSTGRE_NAME=labelstudio   # Label Studio's default: postgres
    POSTGRE_USER=labelstudio   # Label Studio's default: postgres
    POSTGRE_PASSWORD=...       # only ever from the environment

nucleate reads the same variables (:func:`postgres_from_env`), passes them on to the server unchanged, and
before starting it checks that PostgreSQL answers and takes the password (:func:`check_postgres`, run with
Label Studio's own driver, ``psycopg`` 3 in ``.venv-ls``). The password is a :class:`~flows.ls_connection.Secret`
in this process: it is never printed, logged, written to a file or put on a command line (the check gets it
through its environment).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flows.local_service import ServiceError

__all__ = ["PostgresSettings", "DatabaseError", "postgres_from_env", "check_postgres", "POSTGRES_VARS"]

#: Label Studio's names for its PostgreSQL settings (also read with the prefix LABEL_STUDIO_).
POSTGRES_VARS = ("DJANGO_DB", "POSTGRE_NAME", "POSTGRE_USER", "POSTGRE_PASSWORD", "POSTGRE_HOST", "POSTGRE_PORT")
_PG_DB = ("default", "postgresql")


class DatabaseError(ServiceError):
    """Label Studio's PostgreSQL is not reachable, or refused the settings (the message never has the password)."""


def _get(env: Mapping[str, str], name: str, default: str) -> str:
    """``name`` the way Label Studio's ``get_env`` reads it: ``LABEL_STUDIO_<name>``, ``HEARTEX_<name>``, ``<name>``."""
    for key in ("LABEL_STUDIO_" + name, "HEARTEX_" + name, name):
        if env.get(key) is not None:
            return env[key]
    return default


@dataclass(frozen=True)
class PostgresSettings:
    """Where Label Studio's PostgreSQL database is (no password here: it stays in the environment)."""

    host: str
    port: int
    name: str
    user: str

    @property
    def where(self) -> str:
        """``host:port/name`` (a unix socket folder as host: ``/run/postgresql:5432/name``)."""
        return f"{self.host}:{self.port}/{self.name}"

    def identity(self) -> dict:
        return {"engine": "postgresql", "host": self.host, "port": self.port, "name": self.name, "user": self.user}


def postgres_from_env(env: Mapping[str, str] | None = None) -> PostgresSettings | None:
    """The PostgreSQL settings when ``DJANGO_DB`` is ``default`` or ``postgresql``, else None (SQLite).

    Raises :class:`DatabaseError` for a port that is not a number or a ``DJANGO_DB`` nucleate does not run.
    """
    env = os.environ if env is None else env
    db = _get(env, "DJANGO_DB", "sqlite").strip().lower()
    if db in ("", "sqlite"):
        return None
    if db not in _PG_DB:
        raise DatabaseError(f"DJANGO_DB={db!r} is not supported here: unset it (SQLite in the data dir) or set "
                            "DJANGO_DB=default with POSTGRE_HOST, POSTGRE_PORT, POSTGRE_NAME, POSTGRE_USER and "
                            "POSTGRE_PASSWORD for PostgreSQL")
    port = _get(env, "POSTGRE_PORT", "5432").strip()
    if not port.isdigit():
        raise DatabaseError(f"POSTGRE_PORT={port!r} is not a port number: set it to PostgreSQL's port (e.g. 5432)")
    return PostgresSettings(host=_get(env, "POSTGRE_HOST", "localhost"), port=int(port),
                            name=_get(env, "POSTGRE_NAME", "postgres"), user=_get(env, "POSTGRE_USER", "postgres"))


# Runs in .venv-ls with the server's environment: connects once with Label Studio's own driver and prints one
# word (what went wrong) and the gist of libpq's message on failure. The password comes from the environment.
_CHECK = r"""
import os, sys
def get(name, default):
    for key in ('LABEL_STUDIO_' + name, 'HEARTEX_' + name, name):
        if os.environ.get(key) is not None:
            return os.environ[key]
    return default
try:
    import psycopg
except ImportError as exc:
    print('driver', exc); sys.exit(3)
try:
    psycopg.connect(host=get('POSTGRE_HOST', 'localhost'), port=int(get('POSTGRE_PORT', '5432')),
                    dbname=get('POSTGRE_NAME', 'postgres'), user=get('POSTGRE_USER', 'postgres'),
                    password=get('POSTGRE_PASSWORD', 'postgres'), connect_timeout=5).close()
except psycopg.OperationalError as exc:
    msg = str(exc)
    low = msg.lower()
    kind = ('password' if 'password' in low or 'authentication failed' in low
            else 'database' if 'database' in low and 'does not exist' in low
            else 'role' if 'role' in low and 'does not exist' in low else 'unreachable')
    first = (msg.strip().splitlines() or [''])[0]
    print(kind, first.rsplit('failed: ', 1)[-1].replace('FATAL:', '').strip()); sys.exit(2)
print('ok')
"""


def check_postgres(settings: PostgresSettings, python: Path, env: Mapping[str, str], timeout: float = 30.0) -> None:
    """Connect once to ``settings`` with Label Studio's Python ``python`` (its venv) and server environment
    ``env``; raise :class:`DatabaseError` with one line naming ``host:port/name`` and the fix."""
    try:
        proc = subprocess.run([str(python), "-c", _CHECK], env=dict(env), capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DatabaseError(f"PostgreSQL at {settings.where} did not answer within {timeout:.0f} s: check that it runs "
                            "there and that POSTGRE_HOST / POSTGRE_PORT point at it; nothing was changed") from None
    out = (proc.stdout.strip().splitlines() or [""])[-1]
    kind, _, detail = out.partition(" ")
    password = _get(env, "POSTGRE_PASSWORD", "")
    if password:
        detail = detail.replace(password, "********")
    if proc.returncode == 0 and kind == "ok":
        return
    where = f"PostgreSQL at {settings.where}"
    if kind == "password":
        msg = (f"{where} rejected the password of user {settings.user!r}: set POSTGRE_PASSWORD to that user's "
               "password, or POSTGRE_USER to the right user")
    elif kind == "database":
        msg = (f"{where}: database {settings.name!r} does not exist: create it (createdb -h {settings.host} "
               f"-p {settings.port} -U {settings.user} {settings.name}) or set POSTGRE_NAME to an existing one")
    elif kind == "role":
        msg = f"{where}: user {settings.user!r} does not exist: create it (createuser) or set POSTGRE_USER"
    elif kind == "unreachable":
        msg = (f"{where} is not reachable ({detail or 'no answer'}): start PostgreSQL, or set POSTGRE_HOST and "
               "POSTGRE_PORT to where it listens")
    elif kind == "driver":
        msg = f"Label Studio's PostgreSQL driver (psycopg) is missing from {python.parent.parent}: run `make setup`"
    else:
        msg = f"checking {where} failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"
        if password:
            msg = msg.replace(password, "********")
    raise DatabaseError(msg + "; nothing was changed")
