"""Background servers on this machine (the local Label Studio, the Prefect server): free ports on 127.0.0.1,
bounded health polls that name the server's log, "is this pid still that server?" and stopping by pid.

:mod:`flows.ls_server` and :mod:`flows.prefect_server` start their server as a child process in its own session
(``start_new_session``) with output to a log file, and keep ``{"url", "port", "pid", ...}`` in a state file; the
helpers here are what the two share.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["ServiceError", "free_port", "http_ok", "wait_until_ok", "log_tail", "pid_runs", "spawn", "stop_pid"]

#: Servers started by this process (pid -> Popen), so stopping one reaps it through its Popen.
_SPAWNED: dict[int, subprocess.Popen] = {}


class ServiceError(RuntimeError):
    """A local server could not be started or stopped (subclassed per server)."""


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when it is free on 127.0.0.1, else a port the OS hands out."""
    if preferred:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when a GET of ``url`` answers 200 (no authentication)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError):
        return False


def log_tail(log: Path | None, n: int = 2000) -> str:
    """``"; last lines of LOG:\\n..."`` (its last ``n`` characters), or "" when there is no log."""
    if log is None or not Path(log).exists():
        return ""
    return f"; last lines of {log}:\n" + Path(log).read_text(errors="replace")[-n:]


def wait_until_ok(url: str, proc: subprocess.Popen | None, log: Path | None, *, name: str, timeout: float,
                  error: type[ServiceError] = ServiceError) -> None:
    """Poll ``url`` until it answers 200; raise ``error`` naming ``name``, ``url`` and the log (with its tail)
    when ``proc`` exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not http_ok(url):
        if proc is not None and proc.poll() is not None:
            raise error(f"{name} exited with code {proc.returncode} before {url} answered" + log_tail(log))
        if time.monotonic() > deadline:
            raise error(f"{name} did not answer {url} within {timeout:.0f} s" + log_tail(log))
        time.sleep(0.25)


def pid_runs(pid: int, program: str, args: tuple[str, ...], env: str) -> bool:
    """True when process ``pid`` runs ``program`` (an argv entry ending with it) with every one of ``args`` on its
    command line and ``env`` (``"NAME=value"``) in its environment: not a reused pid, not another data dir's server."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return (any(part.endswith(program.encode()) for part in cmdline)
            and all(a.encode() in cmdline for a in args) and env.encode() in environ)


def spawn(argv: list[str], *, env: dict[str, str], log_file, umask: int = -1) -> subprocess.Popen:
    """Start ``argv`` in its own session (a terminal's Ctrl-C does not reach it) with stdout and stderr to
    ``log_file`` (an open binary file) and no stdin; remembered so :func:`stop_pid` reaps it."""
    proc = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, umask=umask)
    _SPAWNED[proc.pid] = proc
    return proc


def stop_pid(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM ``pid``, then SIGKILL when it is still there after ``timeout`` seconds."""
    proc = _SPAWNED.pop(pid, None)
    if proc is not None:  # our own child: terminate and reap it through its Popen
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return
        except ChildProcessError:  # not our child: poll /proc
            if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
