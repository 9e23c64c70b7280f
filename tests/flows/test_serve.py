"""flows.serve (`nucleate serve`) and the repository's prefect.yaml: the round deployments, their schedules and
limits, the one-line errors, and -- against a real `prefect server start` -- a served schedule that really fires
and a `prefect deploy` + process worker that runs a deployment."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.serve import ServeError, deployments
from nucleate.config import RoundsParams, load_params

REPO = Path(__file__).resolve().parents[2]
FLOWS = {"open-round": "flows.rounds.open_round", "close-round": "flows.rounds.close_round",
         "watch": "flows.rounds.watch"}


def _project(path: Path) -> Path:
    """A project folder with the repository's params.yaml and dvc.yaml (the round flows read their params from it;
    with no round open, watch touches nothing else)."""
    path.mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", path / "params.yaml")
    shutil.copy(REPO / "dvc.yaml", path / "dvc.yaml")
    return path


def _serve_cli(args, env):
    result = CliRunner().invoke(app, ["serve", *map(str, args)], env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


# -- the deployments ---------------------------------------------------------------------------------------------
def test_three_deployments_named_after_the_project_with_its_schedules(tmp_path):
    project = _project(tmp_path / "lab-x")
    served = {d.flow_name: d for d in deployments(project, RoundsParams())}
    assert set(served) == set(FLOWS)
    for flow, d in served.items():
        assert d.name == "lab-x" and d.entrypoint == FLOWS[flow]               # module path: works when installed
        assert d.parameters == {"project": str(project.resolve())}
        assert d.concurrency_limit == 1
    assert served["watch"].concurrency_options.collision_strategy.value == "CANCEL_NEW"
    assert served["open-round"].concurrency_options is None                   # queued, not dropped
    assert served["open-round"].schedules == [] and served["close-round"].schedules == []
    (watch,) = served["watch"].schedules
    assert (watch.schedule.cron, watch.schedule.timezone) == ("*/10 * * * *", "UTC")   # params rounds.watch_cron

    rounds = RoundsParams(watch_cron="*/15 * * * *", open_cron="0 2 * * 1", timezone="Europe/Berlin")
    served = {d.flow_name: d for d in deployments(tmp_path / "lab-x", rounds)}
    (opening,) = served["open-round"].schedules
    assert (opening.schedule.cron, opening.schedule.timezone) == ("0 2 * * 1", "Europe/Berlin")
    assert served["watch"].schedules[0].schedule.cron == "*/15 * * * *"
    served = {d.flow_name: d for d in deployments(project, rounds, watch_cron="*/5 * * * *", open_cron="")}
    assert served["open-round"].schedules == [] and served["watch"].schedules[0].schedule.cron == "*/5 * * * *"
    served = {d.flow_name: d for d in deployments(project, rounds, interval=5)}
    assert served["watch"].schedules[0].schedule.interval == timedelta(seconds=5)


@pytest.mark.parametrize("kwargs, rounds, message", [
    ({}, RoundsParams(watch_cron="every 10 min"),
     "params.yaml rounds.watch_cron: 'every 10 min' is not a valid cron expression"),
    ({"open_cron": "61 * * * *"}, RoundsParams(), "--open-cron: '61 * * * *' is not a valid cron expression"),
    ({}, RoundsParams(open_cron="0 2 * * *", timezone="Mars/Olympus"),
     "params.yaml rounds.open_cron: 'Mars/Olympus' is not a valid time zone"),
    ({"interval": 5, "watch_cron": "* * * * *"}, RoundsParams(), "--interval and --watch-cron both set"),
    ({"interval": 0}, RoundsParams(), "--interval: 0 is not a positive number of seconds"),
])
def test_bad_schedules_are_one_line_naming_their_source(tmp_path, kwargs, rounds, message):
    with pytest.raises(ServeError) as err:
        deployments(tmp_path, rounds, **kwargs)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_prefect_yaml_declares_the_served_deployments_for_a_process_pool(tmp_path):
    """prefect.yaml (work pools) and `nucleate serve` deploy the same flows with the same limits, and the yaml's
    watch schedule is params.yaml's."""
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    rounds = load_params(REPO / "params.yaml").rounds
    assert spec["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $PWD }}"}}]
    served = {d.entrypoint: d for d in deployments(_project(tmp_path / "nucleate"), rounds)}
    declared = {d["entrypoint"]: d for d in spec["deployments"]}
    assert set(declared) == set(served) == set(FLOWS.values())
    for entrypoint, d in declared.items():
        assert d["name"] == served[entrypoint].name == "nucleate"
        assert d["work_pool"] == {"name": "nucleate"} and d["parameters"] == {"project": "{{ $PWD }}"}
        limit = d["concurrency_limit"]
        if isinstance(limit, dict):
            assert limit == {"limit": 1, "collision_strategy": served[entrypoint].concurrency_options
                             .collision_strategy.value}
        else:
            assert limit == 1 and served[entrypoint].concurrency_options is None
        schedules = [(s["cron"], s["timezone"]) for s in d.get("schedules") or []]
        assert schedules == [(s.schedule.cron, s.schedule.timezone) for s in served[entrypoint].schedules]


# -- one-line errors before serving ------------------------------------------------------------------------------
def test_serve_without_a_prefect_api_url_is_one_error_line(tmp_path):
    project = _project(tmp_path / "lab")
    code, out, err = _serve_cli(["--project", project],
                                {"PREFECT_API_URL": None, "PREFECT_HOME": str(tmp_path / "home")})
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("error: PREFECT_API_URL is not set") and "no scheduler" in err
    assert "start one with `nucleate prefect up`" in err


def test_serve_with_an_unreachable_server_is_one_error_line(tmp_path):
    from flows.local_service import free_port

    url = f"http://127.0.0.1:{free_port()}/api"                             # nothing listens there
    code, out, err = _serve_cli(["--project", _project(tmp_path / "lab")],
                                {"PREFECT_API_URL": url, "PREFECT_HOME": str(tmp_path / "home")})
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: the Prefect server at PREFECT_API_URL={url} does not answer")


def test_serve_with_a_bad_params_cron_is_one_error_line(tmp_path):
    project = _project(tmp_path / "lab")
    params = project / "params.yaml"
    params.write_text(params.read_text().replace('watch_cron: "*/10 * * * *"', 'watch_cron: "*/10 * *"'))
    code, _, err = _serve_cli(["--project", project], {"PREFECT_API_URL": None})
    assert code == 1 and err.strip() == (
        f"error: {params} rounds.watch_cron: '*/10 * *' is not a valid cron expression "
        "(e.g. \"*/10 * * * *\" (every 10 minutes))")


# -- against a real server ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prefect_api(copy_prefect_home, tmp_path_factory):
    """``(api_url, PREFECT_HOME)`` of a real `prefect server start` on a copy of the migrated template; stopped
    (by pid) after the module."""
    from flows.local_service import free_port
    from flows.prefect_server import PrefectServer

    server = PrefectServer(copy_prefect_home(tmp_path_factory.mktemp("serve") / "home"))
    state = server.up(port=free_port(), timeout=180)
    try:
        yield state["api_url"], server.home
    finally:
        server.down()


def _env(api_url: str, home: Path, **extra) -> dict[str, str]:
    """Environment of the Prefect clients started here: this checkout's code first on PYTHONPATH (the flow-run
    subprocesses import flows.rounds from it), the test server, no telemetry."""
    path = os.pathsep.join([str(REPO / "src"), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(home),
            "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def _runs(api_url: str, flow: str, deployment: str) -> list:
    """The flow runs of deployment ``flow/deployment`` (read with the Prefect client)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowFilter, FlowFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])),
                                     deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])))


def _deployment(api_url: str, name: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def _stop(proc: subprocess.Popen, timeout: float = 60.0) -> int:
    """SIGTERM ``proc`` (started in its own session); a second signal to its group when it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def _prefect(args, *, env, cwd, timeout=120.0) -> str:
    """Run the `prefect` CLI (its own session; its group is killed on timeout); its output, or a test failure."""
    from flows.prefect_server import find_prefect_bin

    proc = subprocess.Popen([str(find_prefect_bin()), *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"`prefect {' '.join(args)}` did not finish within {timeout:.0f} s:\n{out[-3000:]}")
    assert proc.returncode == 0, f"`prefect {' '.join(args)}` failed ({proc.returncode}):\n{out[-3000:]}"
    return out


@pytest.mark.slow
def test_served_watch_schedule_fires_and_sigterm_stops_serve(prefect_api, tmp_path):
    api_url, home = prefect_api
    project = _project(tmp_path / "served-lab")
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--project", str(project), "--interval", "5"],
            env=_env(api_url, home, PREFECT_RUNNER_POLL_FREQUENCY="2"), cwd=tmp_path, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, done = time.monotonic() + 180, []
        while not done and time.monotonic() < deadline and serve.poll() is None:
            time.sleep(3)
            runs = _runs(api_url, "watch", "served-lab")
            done = [r for r in runs if r.state_type.value == "COMPLETED"]
        assert done, f"no completed run of watch/served-lab within 180 s; serve's output:\n{log.read_text()[-3000:]}"
        run = done[0]
        assert run.parameters == {"project": str(project.resolve())}
        assert run.expected_start_time is not None and run.auto_scheduled               # fired by its schedule
        assert _deployment(api_url, "watch/served-lab").paused is False
    finally:
        code = _stop(serve)
    assert code == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "SIGTERM received" in text and "All deployments have been paused" in text
    assert _deployment(api_url, "watch/served-lab").paused is True                # no schedule fires while down


@pytest.mark.slow
def test_prefect_deploy_and_a_process_worker_run_a_deployment(prefect_api, tmp_path):
    api_url, home = prefect_api
    project = _project(tmp_path / "pool-lab")
    shutil.copy(REPO / "prefect.yaml", project / "prefect.yaml")
    env = _env(api_url, home, PWD=str(project))              # a shell sets PWD on `cd`; prefect.yaml uses {{ $PWD }}
    _prefect(["work-pool", "create", "nucleate", "--type", "process"], env=env, cwd=project)
    out = _prefect(["--no-prompt", "deploy", "--all"], env=env, cwd=project)
    for flow in FLOWS:
        assert f"Deployment '{flow}/nucleate' successfully created" in " ".join(out.split()), out
    deployment = _deployment(api_url, "watch/nucleate")
    assert deployment.work_pool_name == "nucleate" and deployment.entrypoint == "flows.rounds.watch"
    assert deployment.parameters == {"project": str(project)}
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}]

    out = _prefect(["deployment", "run", "watch/nucleate"], env=env, cwd=project)
    run_id = re.search(r"flow-run/([0-9a-f-]{36})", out).group(1)
    out = _prefect(["worker", "start", "--pool", "nucleate", "--run-once"], env=env, cwd=tmp_path, timeout=240)
    runs = {str(r.id): r for r in _runs(api_url, "watch", "nucleate")}
    assert run_id in runs
    # the run we started completes -- unless a cron tick of the watch deployment ran in the same seconds, which
    # then completed and made ours a cancelled collision (CANCEL_NEW)
    completed = [r for r in runs.values() if r.state_type.value == "COMPLETED"]
    assert runs[run_id].state_type.value in {"COMPLETED", "CANCELLED"} and completed, out[-3000:]
    assert f"Flow run '{completed[0].name}' - Finished in state Completed()" in out
