"""The local Label Studio server: ``nucleate ls up | down | status``.

Label Studio 1.23.2 runs from its own virtual environment (``.venv-ls``, made by ``make setup``) with
SQLite under a git-ignored data dir (default ``.ls-data``)::

    .ls-data/
      server/            LABEL_STUDIO_BASE_DATA_DIR: SQLite database, media, .env (Django secret key)
      files/             LOCAL_FILES_DOCUMENT_ROOT: the images annotators see (files/images/<image_id>.png)
      credentials.json   admin e-mail, password and API token (mode 0600; never printed)
      server.json        url, port and pid of the running server
      server.log         the server's output

The server binds to 127.0.0.1 on a free port, with Sentry, analytics and the version check off, and
is ready when ``/health`` answers. The first ``up`` creates the database, the admin user and its
token (about 30-80 s); later ones start in a few seconds on the same data.

PostgreSQL and worker processes (a lab's shared server): with ``DJANGO_DB=default`` and Label Studio's
``POSTGRE_HOST / POSTGRE_PORT / POSTGRE_NAME / POSTGRE_USER / POSTGRE_PASSWORD`` in the environment
(:mod:`flows.ls_database`) the database is PostgreSQL (media, exports and the secret key stay in the data dir).
``up`` first checks that PostgreSQL answers and takes the password (one line naming ``host:port/name`` and the
fix when not, before anything is started or written), then serves Label Studio the way its production image
does: uWSGI (``pyuwsgi``, the version Label Studio's ``uwsgi`` extra pins) with a master and ``workers``
processes over ``core.wsgi:application`` (static files are served by Label Studio's own view). Default workers on
PostgreSQL: 2 per CPU core, as Label Studio's ``uwsgi.ini``; ``workers=1`` (or SQLite, which allows one writer)
runs ``label-studio start`` as before. The password is passed to the server in its environment only.

The data dir is private: the database holds every annotation and the admin's API token in plain text.
It is created owner-only (folders 0700, files 0600) and the server runs with umask 077, so the files
Label Studio writes (database, media, exports, logs) are owner-only too. ``up`` checks an existing data
dir and makes anything that other users can read owner-only (``chmod -R go-rwx``), saying so in one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flows.local_service import ServiceError, free_port, http_ok, log_tail, pid_runs, spawn, stop_pid, wait_until_ok
from flows.ls_database import DatabaseError, PostgresSettings, check_postgres, postgres_from_env
from nucleate.io import atomic_write_text

__all__ = [
    "PRIVATE_UMASK",
    "LS_VERSION",
    "DEFAULT_DATA_DIR",
    "LocalServer",
    "ServerError",
    "server_env",
    "free_port",
    "wait_healthy",
    "find_ls_bin",
    "default_workers",
    "DatabaseError",
]

LS_VERSION = "1.23.2"
#: umask of the server process and of everything nucleate writes in the data dir: no access for group/others
PRIVATE_UMASK = 0o077
DEFAULT_DATA_DIR = Path(".ls-data")
ADMIN_EMAIL = "admin@nucleate.local"
#: Variables Label Studio also reads without a prefix; a CI's HOST/PORT/... must not leak into it.
_LEAKY = ("HOST", "PORT", "USERNAME", "PASSWORD", "DEBUG", "DATABASE_NAME")


class ServerError(ServiceError):
    """The local Label Studio server could not be set up, started or stopped."""


def default_workers() -> int:
    """Worker processes on PostgreSQL when none are asked for: 2 per CPU core (Label Studio's ``uwsgi.ini``)."""
    return 2 * (os.cpu_count() or 1)


#: uWSGI options of Label Studio's production image (deploy/uwsgi.ini in its repository), less its stats server,
#: process renaming and JSON log encoders; the master stops its workers on SIGTERM.
_UWSGI_OPTIONS = (
    "--master", "--single-interpreter", "--lazy-apps", "--need-app", "--die-on-term", "--vacuum",
    "--threads", "1", "--enable-threads", "--thunder-lock", "--buffer-size", "65535", "--post-buffering", "4096",
    "--http-timeout", "300", "--harakiri", "120", "--max-requests", "5000", "--reload-on-rss", "2048",
    "--worker-reload-mercy", "300",
    # clients talk to the router directly (the image puts nginx in front): keep their connections open, as an
    # HTTP/1.1 client expects (without this the router closes them after each answer and the next request on a
    # reused connection breaks)
    "--http-keepalive", "--http-auto-chunked", "--ignore-sigpipe", "--ignore-write-errors", "--disable-write-exception",
    "--disable-logging", "--log-5xx",
)


def _ls_package(ls_bin: Path) -> Path:
    """The ``label_studio`` package folder of the venv of ``ls_bin`` (uWSGI runs from there, like the image)."""
    found = sorted((ls_bin.parent.parent / "lib").glob("python3*/site-packages/label_studio/core/wsgi.py"))
    if not found:
        raise ServerError(f"label_studio's package was not found beside {ls_bin}: run `make setup`")
    return found[-1].parent.parent


def find_ls_bin() -> Path:
    """The ``label-studio`` executable: ``$NUCLEATE_LS_BIN``, else ``.venv-ls/bin/label-studio`` here or
    beside the installed package."""
    env = os.environ.get("NUCLEATE_LS_BIN")
    if env:
        return Path(env)
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = root / ".venv-ls" / "bin" / "label-studio"
        if candidate.exists():
            return candidate
    raise ServerError(
        f"label-studio {LS_VERSION} is not installed: run `make setup` (creates .venv-ls), "
        "or set NUCLEATE_LS_BIN to a label-studio executable"
    )


def server_env(
    data: Path,
    files_root: Path,
    *,
    email: str,
    password: str,
    token: str,
    base: Mapping[str, str] | None = None,
    allow_local_webhooks: bool = False,
) -> dict[str, str]:
    """Environment for ``label-studio init|start``: data in ``data``, local files below ``files_root``,
    legacy token ``token`` for ``email``, no Sentry, analytics or version check. Label Studio's SSRF guard is off
    with ``allow_local_webhooks`` or when the S3 endpoint (``AWS_ENDPOINT_URL``) is a private address."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _LEAKY}
    env.update({
        "LABEL_STUDIO_BASE_DATA_DIR": str(Path(data).resolve()),
        "LABEL_STUDIO_USERNAME": email,
        "LABEL_STUDIO_PASSWORD": password,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(Path(files_root).resolve()),
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "FEATURE_FLAGS_OFFLINE": "true",
    })
    if allow_local_webhooks or _private_endpoint(env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")):
        env["SSRF_PROTECTION_ENABLED"] = "false"
    return env


def _private_endpoint(url: str | None) -> bool:
    """True when ``url`` (the S3 endpoint from the environment) is on this machine or a private network (a lab's
    MinIO): Label Studio's SSRF guard refuses storage endpoints there, so the local server turns it off."""
    import ipaddress
    import socket
    import urllib.parse

    host = urllib.parse.urlsplit(url or "").hostname
    if not host:
        return False
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return any(ipaddress.ip_address(a.split("%")[0]).is_private or ipaddress.ip_address(a.split("%")[0]).is_loopback
               for a in addresses)


def health(url: str, timeout: float = 2.0) -> bool:
    """True when ``url``/health answers 200 (no authentication needed)."""
    return http_ok(url.rstrip("/") + "/health", timeout)


def wait_healthy(url: str, proc: subprocess.Popen | None, log: Path | None, timeout: float = 180.0) -> None:
    """Poll ``/health`` until it answers; raise :class:`ServerError` with the log tail if ``proc`` dies
    or ``timeout`` seconds pass."""
    wait_until_ok(url.rstrip("/") + "/health", proc, log, name="Label Studio", timeout=timeout, error=ServerError)


def _pid_is_label_studio(pid: int, data: Path, server: str = "runserver") -> bool:
    """True when ``pid`` is a ``label-studio start`` (``server="uwsgi"``: a uWSGI master of Label Studio) serving
    the data dir ``data`` (not a reused pid, not another data dir's server)."""
    env = f"LABEL_STUDIO_BASE_DATA_DIR={Path(data).resolve()}"
    if server == "uwsgi":
        return pid_runs(pid, "uwsgi", ("core.wsgi:application",), env)
    return pid_runs(pid, "label-studio", ("start",), env)


@dataclass
class LocalServer:
    """A Label Studio server on this machine with its state in ``data_dir`` (see the module docstring).

    ``environ``: the environment the server starts with and where ``DJANGO_DB`` / ``POSTGRE_*`` are read
    (default: this process's).
    """

    data_dir: Path = DEFAULT_DATA_DIR
    environ: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)

    def database(self) -> PostgresSettings | None:
        """PostgreSQL settings from :attr:`environ` (None: SQLite in the data dir)."""
        try:
            return postgres_from_env(os.environ if self.environ is None else self.environ)
        except DatabaseError as exc:
            raise ServerError(str(exc)) from None

    @property
    def server_data(self) -> Path:
        return self.data_dir / "server"

    @property
    def files_root(self) -> Path:
        return self.data_dir / "files"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def __repr__(self) -> str:  # no credentials here, but keep it explicit
        return f"LocalServer(data_dir={str(self.data_dir)!r})"

    # -- credentials and state -------------------------------------------------------------------
    def credentials(self, create: bool = False) -> dict[str, str]:
        """``{"email", "password", "token"}`` from ``credentials.json``; created (0600) when ``create``."""
        path = self.data_dir / "credentials.json"
        if path.exists():
            return json.loads(path.read_text())
        if not create:
            raise ServerError(f"{path} not found: start the local server once with `nucleate ls up`")
        creds = {"email": ADMIN_EMAIL, "password": secrets.token_urlsafe(18), "token": secrets.token_hex(20)}
        self._mkdir(self.data_dir)
        atomic_write_text(path, json.dumps(creds, indent=2) + "\n")
        os.chmod(path, 0o600)
        return creds

    def state(self) -> dict | None:
        """The running server's ``{"url", "port", "pid"}`` if its process is alive, else None."""
        path = self.data_dir / "server.json"
        if not path.exists():
            return None
        state = json.loads(path.read_text())
        if not _pid_is_label_studio(int(state.get("pid", -1)), self.server_data, state.get("server", "runserver")):
            return None
        return state

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        creds = self.credentials(create=True)
        return server_env(self.server_data, self.files_root, email=creds["email"], password=creds["password"],
                          token=creds["token"], base=self.environ if base is None else base)

    # -- privacy ---------------------------------------------------------------------------------
    def _mkdir(self, path: Path) -> None:
        """Create ``path`` and its missing parents; those in the data dir (and the data dir) owner-only (0700)."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        for p in reversed([path, *path.parents]):
            if not p.exists() and (p == self.data_dir or self.data_dir in p.parents):
                p.mkdir(mode=0o700)
                os.chmod(p, 0o700)  # mkdir's mode is filtered by the umask

    def make_private(self) -> str | None:
        """Make everything under the data dir owner-only (``chmod -R go-rwx``); creates it (0700) if missing.

        Returns one line naming the first path that other users could read and what was done, or None when
        all was private already.
        """
        if not self.data_dir.exists():
            self._mkdir(self.data_dir)
            return None
        opened: list[tuple[Path, int]] = []
        for dirpath, dirnames, filenames in os.walk(self.data_dir):
            for name in (".", *dirnames, *filenames):
                p = Path(dirpath) / name if name != "." else Path(dirpath)
                st = p.lstat()
                if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
                    opened.append((p, stat.S_IMODE(st.st_mode)))
                    os.chmod(p, stat.S_IMODE(st.st_mode) & ~0o077)
        if not opened:
            return None
        first, mode = opened[0]
        return (f"ls: {first} was open to other users (mode {mode:04o}; {len(opened)} path(s) in all) and the data dir "
                f"holds the Label Studio database with the admin's API token: made it owner-only "
                f"(chmod -R go-rwx {self.data_dir})")

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def _db_marker(self) -> Path:
        """``server/database.json``: the PostgreSQL database (host, port, name, user; no password) initialised."""
        return self.server_data / "database.json"

    def initialised(self, db: PostgresSettings | None = None) -> bool:
        """The database (SQLite file, or the PostgreSQL ``db`` recorded by a successful init) and credentials exist."""
        if not (self.data_dir / "credentials.json").exists():
            return False
        if db is None:
            return (self.server_data / "label_studio.sqlite3").exists()
        with contextlib.suppress(OSError, ValueError):
            return json.loads(self._db_marker.read_text()) == db.identity()
        return False

    def init(self, ls_bin: Path | None = None, timeout: float = 600.0) -> None:
        """Create the database (SQLite, or the tables in PostgreSQL), admin user, organisation and token
        (once per database; ~30-80 s; again on the same database: applies missing migrations only)."""
        ls_bin = ls_bin or find_ls_bin()
        db = self.database()
        self._mkdir(self.server_data)
        self._mkdir(self.files_root / "images")
        with self._open_log() as log:
            proc = subprocess.run([str(ls_bin), "init", "--quiet", "--no-browser"], env=self.env(),
                                  stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  timeout=timeout, check=False, umask=PRIVATE_UMASK)
        if proc.returncode != 0 or (db is None and not (self.server_data / "label_studio.sqlite3").exists()):
            raise ServerError(f"`label-studio init` failed (exit {proc.returncode})" + log_tail(self.log_path))
        if db is not None:
            atomic_write_text(self._db_marker, json.dumps(db.identity(), indent=2) + "\n")

    def up(self, port: int | None = None, ls_bin: Path | None = None, timeout: float = 180.0,
           log=lambda line: print(line, file=sys.stderr), workers: int | None = None) -> dict:
        """Start the server (initialising the data dir first if needed); returns its state.

        Already running: returns the existing state. ``port``: use this one (error if taken); default:
        the previous port when free, else any free port. ``workers``: server processes (PostgreSQL only when
        more than 1; default 1 on SQLite, :func:`default_workers` on PostgreSQL). First makes the data dir
        owner-only (:meth:`make_private`; a line through ``log`` when something was open to other users); on
        PostgreSQL, checks that it answers and takes the password before starting anything.
        """
        db = self.database()
        if workers is not None and workers < 1:
            raise ServerError(f"--workers {workers}: give 1 or more worker processes")
        if workers is not None and workers > 1 and db is None:
            raise ServerError(f"--workers {workers} needs PostgreSQL (SQLite allows one writer): set DJANGO_DB=default "
                              "and POSTGRE_HOST, POSTGRE_PORT, POSTGRE_NAME, POSTGRE_USER, POSTGRE_PASSWORD, or "
                              "leave --workers out")
        workers = workers or (default_workers() if db is not None else 1)
        ls_bin = ls_bin or find_ls_bin()
        if db is not None:  # before anything is written: a database that does not answer leaves no data dir behind
            try:
                check_postgres(db, ls_bin.parent / "python", os.environ if self.environ is None else self.environ)
            except DatabaseError as exc:
                raise ServerError(str(exc)) from None
        opened = self.make_private()
        if opened:
            log(opened)
        running = self.state()
        if running and health(running["url"]):
            return running
        if not self.initialised(db):
            where = self.server_data if db is None else f"PostgreSQL {db.where}"
            log(f"ls: first start: creating the database and admin user in {where} (30-80 s)")
            self.init(ls_bin)
        previous = None
        with contextlib.suppress(OSError, ValueError):
            previous = json.loads((self.data_dir / "server.json").read_text()).get("port")
        if port is not None and free_port(port) != port:
            raise ServerError(f"port {port} on 127.0.0.1 is taken; choose another with --port or leave it out")
        port = port or free_port(previous)
        self._mkdir(self.files_root / "images")
        server = "uwsgi" if workers > 1 else "runserver"
        env = self.env()
        if server == "uwsgi":
            uwsgi = ls_bin.parent / "uwsgi"
            if not uwsgi.exists():
                raise ServerError(f"uWSGI is not installed in {ls_bin.parent.parent} (needed for --workers "
                                  f"{workers}): run `make setup`, or use --workers 1")
            argv = [str(uwsgi), "--http", f"127.0.0.1:{port}", "--chdir", str(_ls_package(ls_bin)),
                    "--module", "core.wsgi:application", "--processes", str(workers), *_UWSGI_OPTIONS]
            env.update(DJANGO_SETTINGS_MODULE="core.settings.label_studio", APP_WEBSERVER="uwsgi")
        else:
            argv = [str(ls_bin), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)]
        with self._open_log() as log_file:
            proc = spawn(argv, env=env, log_file=log_file, umask=PRIVATE_UMASK)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc, self.log_path, timeout=timeout)
        except ServerError:
            stop_pid(proc.pid)
            raise
        state = {"url": url, "port": port, "pid": proc.pid, "version": LS_VERSION,
                 "files_root": str(self.files_root.resolve()), "started_at": time.time(),
                 "database": "sqlite" if db is None else f"postgresql {db.where}", "server": server,
                 "workers": workers}
        atomic_write_text(self.data_dir / "server.json", json.dumps(state, indent=2) + "\n")
        return state

    def _open_log(self):
        """The server log, opened for appending; created 0600."""
        return os.fdopen(os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")

    def down(self, timeout: float = 20.0) -> bool:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout`` s). False if it was not running."""
        state = self.state()
        path = self.data_dir / "server.json"
        if state is None:
            path.unlink(missing_ok=True)
            return False
        stop_pid(int(state["pid"]), timeout)
        path.unlink(missing_ok=True)
        return True

