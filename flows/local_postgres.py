"""A throwaway PostgreSQL cluster on this machine, for the tests and the Label Studio benchmark.

:class:`LocalPostgres` makes a new cluster with the server programs of Debian's ``postgresql`` package
(``/usr/lib/postgresql/<version>/bin``: ``initdb``, ``pg_ctl``, ``createdb``; or ``$NUCLEATE_PG_BIN``), starts it
on 127.0.0.1 on a free port with its unix socket in the cluster's own folder, creates a database, and stops and
deletes it all afterwards::

    with LocalPostgres() as pg:              # initdb + start: ~2-5 s
        env = pg.env()                        # DJANGO_DB, POSTGRE_NAME/USER/PASSWORD/HOST/PORT for Label Studio

The superuser's password is random, lives only in this object (and in the environment handed to Label Studio),
and TCP logins need it (scram-sha-256); logins over the unix socket are trusted (only the cluster's owner can
reach the socket's folder). PostgreSQL refuses to run as root: when this process is root, the cluster belongs to
the ``postgres`` user (made by Debian's package) or else ``nobody``, and its programs run through ``runuser``.
``durable=False`` turns off fsync and synchronous commits (tests: faster migrations, nothing to keep);
``settings``: more server settings (``{"default_toast_compression": "lz4"}``).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from flows.local_service import ServiceError, free_port, log_tail

__all__ = ["LocalPostgres", "PostgresError", "find_pg_bin"]


class PostgresError(ServiceError):
    """The throwaway PostgreSQL cluster could not be made, started or stopped."""


def find_pg_bin() -> Path:
    """Folder of PostgreSQL's server programs: ``$NUCLEATE_PG_BIN``, else the newest
    ``/usr/lib/postgresql/<version>/bin`` (Debian), else the folder of ``initdb`` on the PATH."""
    env = os.environ.get("NUCLEATE_PG_BIN")
    if env:
        return Path(env)
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PostgresError("PostgreSQL's server programs (initdb, pg_ctl) were not found: install them "
                        "(Debian: apt-get install postgresql) or set NUCLEATE_PG_BIN to their folder")


class LocalPostgres:
    """A new PostgreSQL cluster in a fresh temporary folder, serving database ``name`` to superuser ``user``
    on 127.0.0.1:``port`` (free port) and on a unix socket in ``socket_dir``."""

    def __init__(self, *, name: str = "labelstudio", user: str = "nucleate", durable: bool = True,
                 pg_bin: Path | None = None, settings: dict[str, str] | None = None):
        self.name, self.user, self.durable = name, user, durable
        self.settings = dict(settings or {})
        self.pg_bin = Path(pg_bin) if pg_bin else find_pg_bin()
        self._password = secrets.token_urlsafe(24)
        self.root: Path | None = None
        self.port: int | None = None
        self.run_as = self._run_as()

    def __repr__(self) -> str:  # the password stays out
        return f"LocalPostgres(port={self.port}, name={self.name!r}, user={self.user!r}, root={str(self.root)!r})"

    @staticmethod
    def _run_as() -> str | None:
        """None when not root; else the unprivileged user that owns the cluster."""
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            try:
                pwd.getpwnam(name)
                return name
            except KeyError:
                continue
        raise PostgresError("running as root and neither a 'postgres' nor a 'nobody' user exists: PostgreSQL "
                            "refuses to run as root; create one (useradd postgres)")

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def password(self) -> str:
        """The superuser's password (TCP logins need it); kept out of reprs and logs."""
        return self._password

    def env(self, *, password: str | None = None, host: str | None = None, port: int | None = None) -> dict[str, str]:
        """Label Studio's database settings for this cluster (``DJANGO_DB=default`` and ``POSTGRE_*``);
        ``password`` / ``host`` / ``port`` override the real ones (tests of bad settings)."""
        return {"DJANGO_DB": "default", "POSTGRE_NAME": self.name, "POSTGRE_USER": self.user,
                "POSTGRE_PASSWORD": self._password if password is None else password,
                "POSTGRE_HOST": host or self.host, "POSTGRE_PORT": str(port or self.port)}

    def _cmd(self, argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess:
        if self.run_as:
            argv = ["runuser", "-u", self.run_as, "--", *argv]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False,
                              cwd="/")
        if proc.returncode != 0:
            program = Path(argv[4 if self.run_as else 0]).name
            raise PostgresError(f"PostgreSQL's {program} failed (exit {proc.returncode}): "
                                f"{(proc.stderr or proc.stdout).strip()[-800:]}" + log_tail(self.log_path, 800))
        return proc

    def start(self, timeout: float = 60.0) -> LocalPostgres:
        """initdb (superuser ``user`` with the random password), start on a free port, create the database."""
        self.root = Path(tempfile.mkdtemp(prefix="nucleate-pg-"))
        os.chmod(self.root, 0o700)
        self.socket_dir.mkdir(mode=0o700)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self._password + "\n")
        os.chmod(pwfile, 0o600)
        if self.run_as:
            ent = pwd.getpwnam(self.run_as)
            for p in (self.root, self.socket_dir, pwfile):
                os.chown(p, ent.pw_uid, ent.pw_gid)
        try:
            self._cmd([str(self.pg_bin / "initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                       "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C",
                       *([] if self.durable else ["--no-sync"])], timeout=timeout)
        finally:
            pwfile.unlink(missing_ok=True)
        self.port = free_port()
        self.restart(timeout)
        self._cmd([str(self.pg_bin / "createdb"), "-h", str(self.socket_dir), "-p", str(self.port),
                   "-U", self.user, self.name], timeout=timeout)
        return self

    def running(self) -> bool:
        return self.root is not None and (self.data / "postmaster.pid").exists()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (fast shutdown); the cluster's files stay until :meth:`remove`."""
        if self.running():
            self._cmd([str(self.pg_bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                       "-t", str(int(timeout)), "stop"], timeout=timeout + 10)

    def restart(self, timeout: float = 60.0) -> None:
        """Start the (stopped) server on its port and data: 127.0.0.1 and the unix socket only."""
        opts = [f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-k {self.socket_dir}"]
        if not self.durable:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        opts += [f"-c {k}={v}" for k, v in self.settings.items()]
        self._cmd([str(self.pg_bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-w",
                   "-t", str(int(timeout)), "-o", " ".join(opts), "start"], timeout=timeout + 10)

    def remove(self) -> None:
        """Stop the server and delete the cluster's folder."""
        try:
            self.stop()
        finally:
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.remove()
