"""``nucleate serve``: one long-running process that serves a project's round deployments on a Prefect server.

Three deployments, each named after the project folder (``open-round/<folder>``, ``close-round/<folder>``,
``watch/<folder>``), each with ``parameters={"project": <absolute project dir>}`` and a concurrency limit of 1:

* ``open-round``: on the ``rounds.open_cron`` schedule when it is set (else only when started by hand or the UI);
* ``close-round``: no schedule (the watcher, a person or the UI starts it);
* ``watch``: on ``rounds.watch_cron`` (or ``--watch-cron``; ``--interval SECONDS`` for tests and demos); a tick
  that comes while the previous one still runs is cancelled, not queued.

The serve process runs at most one flow run at a time (``limit=1``: DVC holds one lock per repository) in a
subprocess whose working directory is the project. It needs a running Prefect server (``nucleate prefect up``,
then ``export PREFECT_API_URL=...``): Prefect's temporary server has no scheduler, so nothing would ever fire.
SIGTERM or Ctrl-C stops it; its schedules are paused until it serves again.

The same deployments for a work pool and a process worker are in the repository's ``prefect.yaml``.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import typer

from nucleate.config import RoundsParams

__all__ = ["ServeError", "deployment_name", "deployments", "require_api", "prepare", "serve", "command"]


class ServeError(RuntimeError):
    """``nucleate serve`` cannot start: no server, a bad schedule, ..."""


def deployment_name(project: Path) -> str:
    """The project's deployments' name: its folder's name."""
    return Path(project).resolve().name


def _schedule(source: str, cron: str, timezone: str):
    """A Prefect cron schedule, or :class:`ServeError` naming ``source`` (a flag or a params key)."""
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.schedules import Cron

    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValueError as exc:
        what = "time zone" if "timezone" in str(exc) else "cron expression"
        value = timezone if what == "time zone" else cron
        example = "UTC or Europe/Berlin" if what == "time zone" else '"*/10 * * * *" (every 10 minutes)'
        raise ServeError(f"{source}: {value!r} is not a valid {what} (e.g. {example})") from None
    return Cron(cron, timezone=timezone)


def deployments(project: Path, rounds: RoundsParams, *, watch_cron: str | None = None, open_cron: str | None = None,
                interval: float | None = None, params_path: str = "params.yaml") -> list:
    """The three ``RunnerDeployment``\\ s of ``project`` (see the module docstring).

    ``watch_cron`` / ``open_cron`` (None: from ``rounds``; ``open_cron=""``: no schedule) and ``interval`` (seconds,
    instead of the watch cron) override the params. Raises :class:`ServeError` for a bad cron or time zone.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import EntrypointType

    from flows.rounds import close_round, open_round, watch

    if interval is not None and watch_cron is not None:
        raise ServeError("--interval and --watch-cron both set the watcher's schedule: give one of them")
    if interval is not None and interval <= 0:
        raise ServeError(f"--interval: {interval} is not a positive number of seconds")
    project = Path(project).resolve()
    name = deployment_name(project)
    tz = rounds.timezone
    open_source = "--open-cron" if open_cron is not None else f"{params_path} rounds.open_cron"
    open_cron = rounds.open_cron if open_cron is None else open_cron
    open_schedules = [_schedule(open_source, open_cron, tz)] if open_cron.strip() else []
    if interval is not None:
        from prefect.schedules import Interval

        watch_schedules = [Interval(timedelta(seconds=interval))]
    else:
        watch_source = "--watch-cron" if watch_cron is not None else f"{params_path} rounds.watch_cron"
        watch_schedules = [_schedule(watch_source, rounds.watch_cron if watch_cron is None else watch_cron, tz)]
    common = {"parameters": {"project": str(project)}, "entrypoint_type": EntrypointType.MODULE_PATH,
              "tags": ["nucleate"]}
    return [
        open_round.to_deployment(name, schedules=open_schedules, concurrency_limit=1, **common),
        close_round.to_deployment(name, schedules=[], concurrency_limit=1, **common),
        watch.to_deployment(name, schedules=watch_schedules, **common, concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)),
    ]


def require_api() -> str:
    """The Prefect API URL the settings point at (``PREFECT_API_URL``: env, profile, prefect.toml), checked to
    answer; else :class:`ServeError` with one line saying how to start a server. Never the temporary server."""
    from prefect.settings import Settings

    from flows.local_service import http_ok
    from flows.prefect_server import PrefectServer

    settings = Settings()  # read now: the environment of this call, not the one at import time
    url = settings.api.url
    if not url:
        local = PrefectServer(settings.home).api_url
        how = (f"a local server is running: export PREFECT_API_URL={local}" if local else
               "start one with `nucleate prefect up` and export the PREFECT_API_URL line it prints")
        raise ServeError("PREFECT_API_URL is not set, and serving needs a running Prefect server (Prefect's "
                         f"temporary server has no scheduler): {how}")
    if not settings.api.key and not http_ok(url.rstrip("/") + "/health", timeout=5.0):
        raise ServeError(f"the Prefect server at PREFECT_API_URL={url} does not answer (/health): "
                         "start one with `nucleate prefect up`, or fix PREFECT_API_URL")
    return url


def prepare(project: Path, rounds: RoundsParams, *, watch_cron: str | None = None, open_cron: str | None = None,
            interval: float | None = None, params_path: str = "params.yaml") -> tuple[list, str]:
    """``(deployments, api_url)``: the checks before serving (:func:`deployments`, :func:`require_api`); raises
    :class:`ServeError` for a bad schedule or no server."""
    served = deployments(project, rounds, watch_cron=watch_cron, open_cron=open_cron, interval=interval,
                         params_path=params_path)
    return served, require_api()


def serve(project: Path, rounds: RoundsParams, **overrides) -> None:
    """Serve the project's deployments until SIGTERM / Ctrl-C (see the module docstring); ``overrides``: the
    keywords of :func:`deployments`. Raises :class:`ServeError` before serving (:func:`prepare`)."""
    _serve(Path(project).resolve(), *prepare(project, rounds, **overrides))


def _serve(project: Path, served: list, url: str) -> None:
    from prefect import serve as prefect_serve

    typer.echo(f"serving {', '.join(f'{d.flow_name}/{d.name}' for d in served)} for {project} on {url}; "
               "SIGTERM or Ctrl-C stops (schedules pause until the next `nucleate serve`)", err=True)
    os.chdir(project)  # flow runs start in the project
    prefect_serve(*served, limit=1)


def command(
    project: Path = typer.Option(Path("."), "--project", help="The project folder (params.yaml, dvc.yaml)."),
    watch_cron: str = typer.Option(None, "--watch-cron",
                                   help="The watcher's cron (default: params rounds.watch_cron)."),
    open_cron: str = typer.Option(None, "--open-cron",
                                  help='Cron that opens rounds (default: params rounds.open_cron; "" = none).'),
    interval: float = typer.Option(None, "--interval", help="Run the watcher every SECONDS instead of a cron (tests)."),
) -> None:
    """Serve the round deployments (open-round, close-round, watch) of a project on the Prefect server.

    Needs PREFECT_API_URL pointing at a running server: `nucleate prefect up` starts one. Runs until SIGTERM / Ctrl-C.
    """
    from tasks._stage import fail, load_params_or_exit, stage_errors

    if not project.is_dir():
        fail(f"--project {project}: not a folder")
    params_path = project / "params.yaml"
    rounds = load_params_or_exit(params_path).rounds
    with stage_errors(ServeError):
        served, url = prepare(project, rounds, watch_cron=watch_cron, open_cron=open_cron, interval=interval,
                              params_path=str(params_path))
    _serve(project.resolve(), served, url)


def main() -> None:
    """``python -m flows.serve``: the same as ``nucleate serve``."""
    from tasks._stage import run_alone

    run_alone(command)


if __name__ == "__main__":
    main()
