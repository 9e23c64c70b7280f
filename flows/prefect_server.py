"""The local Prefect server: ``nucleate prefect up | down | status``.

Scheduled deployments (``nucleate serve``, ``prefect deploy`` + a worker) need a running Prefect server: the
temporary server Prefect starts by itself when ``PREFECT_API_URL`` is unset has no scheduler, so nothing scheduled
ever fires there. This starts one the way Prefect users do,
``prefect server start --host 127.0.0.1 --port P --analytics-off``, as a background process with its state under
``PREFECT_HOME`` (default: the project's git-ignored ``.prefect/``)::

    .prefect/
      prefect.db      the server's SQLite database (deployments, flow runs, logs, artifacts)
      server.json     url, api_url, port and pid of the running server (written by nucleate)
      server.log      the server's output

The server binds to 127.0.0.1 (port 4200 when free, else the previous one, else any free port) with analytics
off, and is ready when ``/api/health`` answers: about 10-20 s with a new database (migrations), 3-5 s later.
Clients (``nucleate serve``, ``prefect deploy``, ``prefect worker start``, the UI) reach it through
``PREFECT_API_URL=http://127.0.0.1:P/api``; the UI is at ``http://127.0.0.1:P``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flows.local_service import ServiceError, free_port, http_ok, pid_runs, spawn, stop_pid, wait_until_ok
from nucleate.io import atomic_write_text

__all__ = ["DEFAULT_HOME", "DEFAULT_PORT", "PrefectServer", "PrefectServerError", "find_prefect_bin", "server_env"]

DEFAULT_HOME = Path(".prefect")
DEFAULT_PORT = 4200  # Prefect's own default


class PrefectServerError(ServiceError):
    """The local Prefect server could not be started or stopped."""


def find_prefect_bin() -> Path:
    """The ``prefect`` executable of this Python environment (beside ``sys.executable``), else the one on PATH."""
    beside = Path(sys.executable).parent / "prefect"
    if beside.exists():
        return beside
    found = shutil.which("prefect")
    if found:
        return Path(found)
    raise PrefectServerError("the `prefect` command is not installed in this environment: run `make setup`")


def server_env(home: Path, api_url: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of ``prefect server start``: state in ``home``, analytics and client telemetry off, and
    ``PREFECT_API_URL`` pointing at itself (the UI talks to that API, whatever the caller's shell says)."""
    env = dict(os.environ if base is None else base)
    env.update({
        "PREFECT_HOME": str(Path(home).resolve()),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    })
    return env


@dataclass
class PrefectServer:
    """A Prefect server on this machine with its state in ``home`` (``PREFECT_HOME``; see the module docstring)."""

    home: Path = DEFAULT_HOME

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser()

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    @property
    def state_path(self) -> Path:
        return self.home / "server.json"

    def state(self) -> dict | None:
        """The running server's ``{"url", "api_url", "port", "pid", ...}`` if its process is alive, else None."""
        try:
            state = json.loads(self.state_path.read_text())
            pid = int(state["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return state if self._is_mine(pid) else None

    @property
    def api_url(self) -> str | None:
        """``http://127.0.0.1:P/api`` of the running server (what clients need in ``PREFECT_API_URL``), or None."""
        state = self.state()
        return state["api_url"] if state else None

    def healthy(self) -> bool:
        state = self.state()
        return state is not None and http_ok(state["api_url"] + "/health")

    def _is_mine(self, pid: int) -> bool:
        """``pid`` is a ``prefect server start`` with this ``PREFECT_HOME`` (not a reused pid, not another home's)."""
        return pid_runs(pid, "prefect", ("server", "start"), f"PREFECT_HOME={self.home.resolve()}")

    def up(self, port: int | None = None, timeout: float = 120.0, prefect_bin: Path | None = None,
           log=lambda line: print(line, file=sys.stderr)) -> dict:
        """Start the server (or find it running); returns its state.

        ``port``: use this one (error if taken); default: the previous one when free, else 4200 when free, else
        any free port. Waits up to ``timeout`` s for ``/api/health``; on failure stops what it started and raises
        :class:`PrefectServerError` naming the log (with its last lines).
        """
        running = self.state()
        if running:  # alive: answering, or still starting (another `up`)
            wait_until_ok(running["api_url"] + "/health", None, self.log_path, name="the Prefect server",
                          timeout=timeout, error=PrefectServerError)
            return running
        prefect_bin = prefect_bin or find_prefect_bin()
        if port is not None and free_port(port) != port:
            raise PrefectServerError(f"port {port} on 127.0.0.1 is taken; choose another with --port or leave it out")
        if port is None:
            previous = None
            with contextlib.suppress(OSError, ValueError, AttributeError):
                previous = json.loads(self.state_path.read_text()).get("port")
            port = free_port(previous) if previous and free_port(previous) == previous else free_port(DEFAULT_PORT)
        if not self.home.exists():
            self.home.mkdir(mode=0o700, parents=True)
            log(f"prefect: new PREFECT_HOME {self.home}: the first start creates the database (10-20 s)")
        url = f"http://127.0.0.1:{port}"
        api_url = url + "/api"
        argv = [str(prefect_bin), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--analytics-off"]
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
            log_file.flush()
            proc = spawn(argv, env=server_env(self.home, api_url), log_file=log_file)
        try:
            wait_until_ok(api_url + "/health", proc, self.log_path, name="the Prefect server", timeout=timeout,
                          error=PrefectServerError)
        except PrefectServerError:
            stop_pid(proc.pid)
            raise
        state = {"url": url, "api_url": api_url, "port": port, "pid": proc.pid,
                 "home": str(self.home.resolve()), "started_at": time.time()}
        atomic_write_text(self.state_path, json.dumps(state, indent=2) + "\n")
        return state

    def down(self, timeout: float = 20.0) -> bool:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout`` s). False if it was not running."""
        state = self.state()
        if state is not None:
            stop_pid(int(state["pid"]), timeout)
        self.state_path.unlink(missing_ok=True)
        return state is not None
