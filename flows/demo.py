"""``make demo`` / ``nucleate demo``: the whole product on the sample data, in one command.

What it does (each phase is timed; the timings land in ``.demo/timings.json``):

1. **setup** — starts a local Label Studio (``.demo/ls-data``) and a local Prefect server (``prefect server
   start`` in the background, SQLite under ``PREFECT_HOME``, 127.0.0.1), writes the real sample images
   (``storage/sample``) and scores them once with the teacher (the score cache is shared by both runs).
2. **workspaces** — two nucleate projects made by ``nucleate init`` under ``.demo/`` (git + DVC each, their own
   local DVC remote): ``pcoreset`` and ``random`` differ only in ``select.strategy``. The demo never commits
   to or tags this checkout: each workspace is its own repository with its own ``round-NNN`` tags.
3. **rounds** — in both workspaces at once (one CPU thread each): ``rounds`` times open-round -> the simulated
   annotator clicks in the real Label Studio (jittered ground-truth points, misses and false clicks, keeping
   pre-annotations it agrees with) -> close-round (pseudo-masks, training, evaluation, report, tag).
4. **summary** — a table of clicks vs test Dice / AJI / PQ per round for both strategies, the learning-curve
   PNG (``.demo/learning_curve.png``), the final PCoreSet student copied to ``storage/model/`` (so
   ``nucleate predict --model storage/model ...`` works), the Label Studio and Prefect UI URLs.

The student is sized for a CPU (:data:`CPU_SETTINGS`); with CUDA the shipped training settings are kept,
so a GPU trains longer and better instead of making the demo slower. ``--set KEY=VALUE`` overrides any
params key in both workspaces (the tests run the demo with a tiny student this way).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
import yaml

__all__ = ["CPU_SETTINGS", "STRATEGIES", "demo_command"]

#: the two workspaces: select.strategy of each
STRATEGIES = ("pcoreset", "random")
#: the student the CPU demo trains (params keys): ~1 min of training per round on one core (BENCHMARKS.md)
CPU_SETTINGS: dict[str, Any] = {
    "model.width": 16,
    "model.nucleus_radius_px": 8.0,
    "train.epochs": 6,
    "train.steps_per_epoch": 10,
    "train.patch_px": 96,
    "train.kd_unlabeled": 1,
    "train.val_every": 0,
    "donuseg.start_epoch": 2,
    "donuseg.refresh_epochs": 2,
}
#: both workspaces, CPU or GPU: one thread each (they run side by side)
COMMON_SETTINGS: dict[str, Any] = {"train.threads": 1}
ANNOTATOR = "sim-1@nucleate.local"
EVENT = "DEMO-EVENT "


def _set(params: dict[str, Any], key: str, value: Any) -> None:
    node = params
    *parents, leaf = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise typer.BadParameter(f"--set {key}: params.yaml has no section {part!r}")
        node = node[part]
    if leaf not in node:
        raise typer.BadParameter(f"--set {key}: params.yaml has no key {key}")
    node[leaf] = value


def _parse_sets(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=2")
        out[key.strip()] = yaml.safe_load(raw)
    return out


@contextlib.contextmanager
def _phase(timings: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 1)
    typer.echo(f"[demo] {name}: {timings[name]:.0f} s")


# --- child: one workspace's rounds ----------------------------------------------------------------------------

def _emit(**event: Any) -> None:
    print(EVENT + json.dumps(event), flush=True)


def run_rounds(workspace: Path, rounds: int, ground_truth: Path) -> None:
    """Run ``rounds`` rounds in ``workspace`` (open -> simulated annotator clicking ``ground_truth`` points, a
    points table -> close), one event line each step."""
    from flows.annotate_sim import annotate_sim
    from flows.rounds import Project, close_round, open_round
    from nucleate.io import read_table

    for _ in range(rounds):
        t0 = time.perf_counter()
        opened = open_round(str(workspace), wait=False)
        r = int(opened["round"])
        _emit(round=r, phase="open", seconds=round(time.perf_counter() - t0, 1), tasks=opened["tasks"])
        t0 = time.perf_counter()
        proj = Project.load(workspace)
        gt = read_table("points", ground_truth)
        with proj.adapter() as adapter:
            pid = adapter.find_project(proj.params.labelstudio.project_title)
            sim = annotate_sim(adapter, pid, gt, annotator=ANNOTATOR, params=proj.params.labelstudio,
                               seed=proj.params.seed, rounds=[r], labels=proj.params.labels)
        _emit(round=r, phase="annotate", seconds=round(time.perf_counter() - t0, 1), clicks=sim.clicks,
              kept=sim.accepted_predictions)
        t0 = time.perf_counter()
        closed = close_round(str(workspace), r)
        _emit(round=r, phase="close", seconds=round(time.perf_counter() - t0, 1), test=closed.get("test"))


# --- parent -----------------------------------------------------------------------------------------------------

def _start_servers(workdir: Path, log) -> tuple[Any, Any, list[Any]]:
    """Label Studio (``workdir/ls-data``) and Prefect (``PREFECT_HOME``, default ``.prefect``), side by side;
    also returns the ones this call started (the demo stops only those)."""
    from flows.ls_server import LocalServer
    from flows.prefect_server import PrefectServer

    ls = LocalServer(workdir / "ls-data")
    prefect = PrefectServer(Path(os.environ.get("PREFECT_HOME", ".prefect")))
    started = [s for s in (ls, prefect) if s.state() is None]
    errors: list[BaseException] = []

    def start_prefect() -> None:
        try:
            prefect.up(log=log)
        except BaseException as exc:  # noqa: BLE001 - re-raised below in the main thread
            errors.append(exc)

    thread = threading.Thread(target=start_prefect, daemon=True)
    thread.start()
    try:
        ls.up(log=log)
    finally:
        thread.join()
    if errors:
        raise errors[0]
    return ls, prefect, started


def _prepare_sample(checkout: Path, teacher_params) -> None:
    """storage/sample + manifest + teacher scores in this checkout (the teacher cache seeds both workspaces)."""
    from nucleate.io import LAYOUT
    from tasks import ingest, sample_data, teacher

    storage = checkout / LAYOUT.root
    if not (storage / "sample" / "points.parquet").is_file():
        sample_data.run(out=storage / "sample")
    ingest.run(folder=storage / "sample" / "images", manifest=storage / "manifest.parquet")
    teacher.run(teacher_params, manifest=storage / "manifest.parquet", out=storage / "teacher_probs.parquet",
                cache=storage / "teacher_cache")


def _make_workspace(checkout: Path, path: Path, strategy: str, settings: dict[str, Any]) -> None:
    """``nucleate init`` a workspace on the checkout's sample images, with the demo's params."""
    from flows.project import init_project

    sample = checkout / "storage" / "sample"
    init_project(path, images=sample / "images", gold_masks=sample / "masks")
    params_path = path / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    for key, value in {"select.strategy": strategy,
                       "labelstudio.project_title": f"nucleate demo {strategy}", **settings}.items():
        _set(params, key, value)
    params_path.write_text(f"# nucleate demo workspace ({strategy}); settings: flows/demo.py\n"
                           + yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(checkout / "storage" / "teacher_cache", path / "storage" / "teacher_cache", dirs_exist_ok=True)


def _effective_params(checkout: Path, settings: dict[str, Any]):
    """The checkout's params.yaml with the demo's settings: what the workspaces run with (validated)."""
    from nucleate.config import params_from_dict

    raw = yaml.safe_load((checkout / "params.yaml").read_text())
    for key, value in settings.items():
        _set(raw, key, value)
    return params_from_dict(raw, source="params.yaml + demo settings")


def _curve(workspace: Path) -> list[dict[str, str]]:
    from tasks.evaluate import read_curve

    return read_curve(workspace / "storage" / "plots" / "learning_curve.csv")[0]


def _table(curves: dict[str, list[dict[str, str]]]) -> list[str]:
    head = f"{'strategy':<9} {'round':>5} {'images':>6} {'clicks':>6} {'test Dice':>9} {'AJI':>6} {'PQ':>6}"
    lines = [head, "-" * len(head)]
    for strategy, rows in curves.items():
        for row in rows:
            scores = " ".join(f"{float(row[f'test_{m}']):>{w}.3f}" for m, w in (("dice", 9), ("aji", 6), ("pq", 6)))
            lines.append(f"{strategy:<9} {int(row['round']):>5} {int(row['images']):>6} {int(row['clicks']):>6} "
                         + scores)
    return lines


def _plot(curves: dict[str, list[dict[str, str]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nucleate.io import atomic_path

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, metric in zip(axes, ("dice", "aji", "pq"), strict=True):
        for strategy, rows in curves.items():
            ax.plot([int(r["clicks"]) for r in rows], [float(r[f"test_{metric}"]) for r in rows], "o-",
                    label=strategy)
        ax.set_xlabel("clicks")
        ax.set_title(f"test {metric.upper() if metric != 'dice' else 'Dice'}")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _copy_model(source: Path, target: Path) -> None:
    from nucleate.io import atomic_dir

    with atomic_dir(target) as staging:
        for item in source.iterdir():
            if item.is_file():
                shutil.copy2(item, staging / item.name)


def demo_command(
    rounds: int = typer.Option(3, min=1, help="Rounds per strategy."),
    workdir: Path = typer.Option(Path(".demo"), help="Demo folder (git-ignored; replaced by each run)."),
    set_: list[str] = typer.Option(None, "--set", help="Override a params key in both workspaces, KEY=VALUE."),
    keep: bool = typer.Option(False, "--keep", help="Leave Label Studio and Prefect running afterwards."),
) -> None:
    """Run the demo: 3 rounds with PCoreSet and 3 with random selection on the sample data, annotated by a
    simulated annotator in a real Label Studio, as Prefect flows; prints clicks vs test Dice / AJI / PQ."""
    from tasks._stage import fail, setup_logging

    setup_logging()
    checkout = Path.cwd()
    try:
        overrides = _parse_sets(set_ or [])
        import torch

        settings = {**COMMON_SETTINGS, **({} if torch.cuda.is_available() else CPU_SETTINGS), **overrides}
        params = _effective_params(checkout, settings)
    except FileNotFoundError:
        fail(f"{checkout / 'params.yaml'}: not found; run the demo from the nucleate checkout (make demo)")
    except (typer.BadParameter, ValueError) as exc:
        fail(exc)
    timings: dict[str, Any] = {}
    workdir = workdir.resolve()
    for strategy in STRATEGIES:  # a previous demo's workspaces (never anything else) go
        shutil.rmtree(workdir / strategy, ignore_errors=True)
        shutil.rmtree(workdir / f"{strategy}-dvc-remote", ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    ls = prefect = None
    started: list[Any] = []
    try:
        with _phase(timings, "setup"):
            errors: list[BaseException | None] = []
            sample = threading.Thread(target=lambda: errors.append(_try(_prepare_sample, checkout, params.teacher)))
            sample.start()
            try:
                ls, prefect, started = _start_servers(workdir, log=lambda line: typer.echo(f"[demo] {line}"))
            finally:
                sample.join()
            if errors and errors[0] is not None:
                raise errors[0]
        with _phase(timings, "workspaces"):
            for strategy in STRATEGIES:
                _make_workspace(checkout, workdir / strategy, strategy, settings)
            _forget_projects(ls)
        with _phase(timings, "rounds"):
            events = _run_children(workdir, rounds, checkout / "storage" / "sample" / "points.parquet", ls, prefect)
            timings["steps"] = events
        with _phase(timings, "summary"):
            curves = {s: _curve(workdir / s) for s in STRATEGIES}
            for line in _table(curves):
                typer.echo(line)
            _plot(curves, workdir / "learning_curve.png")
            _copy_model(workdir / "pcoreset" / "storage" / "model", checkout / "storage" / "model")
        typer.echo(f"learning curve: {workdir / 'learning_curve.png'}; round reports: "
                   f"{workdir}/<strategy>/storage/reports/")
        typer.echo("final PCoreSet student: storage/model (try `nucleate predict --model storage/model "
                   "--images storage/sample/images --out storage/predictions`)")
        pid = _project_id(ls, "pcoreset")
        typer.echo(f"Label Studio: {ls.state()['url']}/projects/{pid}/data (log in with the e-mail and password in "
                   f"{workdir / 'ls-data' / 'credentials.json'})")
        typer.echo(f"Prefect UI:   {prefect.state()['url']}/runs")
    except Exception as exc:  # noqa: BLE001 - one line, then the servers are stopped
        fail(exc)
    finally:
        (workdir / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
        if not keep:
            for server in started:
                with contextlib.suppress(Exception):
                    server.down()
            if started:
                typer.echo("[demo] servers stopped (`nucleate demo --keep` leaves them running; `nucleate ls up "
                           f"--data-dir {workdir / 'ls-data'}` and `nucleate prefect up` bring them back with the "
                           "demo's projects and runs)")


def _project_id(ls, strategy: str) -> int:
    from flows.ls_client import Adapter
    from flows.ls_connection import resolve_connection

    with Adapter(resolve_connection(ls.data_dir, env={}), retries=2) as adapter:
        return adapter.find_project(f"nucleate demo {strategy}")


def _try(fn, *args) -> BaseException | None:
    try:
        fn(*args)
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread
        return exc
    return None


def _forget_projects(ls) -> None:
    """Delete an earlier demo's Label Studio projects (same titles) so each demo starts with none."""
    from flows.ls_client import Adapter
    from flows.ls_connection import LabelStudioError, resolve_connection

    with Adapter(resolve_connection(ls.data_dir, env={}), retries=2) as adapter:
        for strategy in STRATEGIES:
            with contextlib.suppress(LabelStudioError):
                adapter.delete_project(adapter.find_project(f"nucleate demo {strategy}"))


def _run_children(workdir: Path, rounds: int, ground_truth: Path, ls, prefect) -> dict[str, list[dict[str, Any]]]:
    """Both workspaces' rounds in two processes; their events are printed as they come."""
    creds = ls.credentials()
    env = {**os.environ, "NUCLEATE_LS_URL": ls.state()["url"], "NUCLEATE_LS_TOKEN": creds["token"],
           "NUCLEATE_LS_FILES_ROOT": str(ls.files_root.resolve()), "PREFECT_API_URL": prefect.api_url,
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    procs = {}
    for strategy in STRATEGIES:
        log = open(workdir / f"{strategy}.log", "w")  # noqa: SIM115 - closed below
        argv = [sys.executable, "-m", "flows.demo", str(workdir / strategy), str(rounds), str(ground_truth)]
        procs[strategy] = (subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, env=env), log)
    events: dict[str, list[dict[str, Any]]] = {s: [] for s in STRATEGIES}

    def read(strategy: str) -> None:
        proc = procs[strategy][0]
        with proc.stdout:  # the pipe is closed once the child is done (no unclosed-file warning at exit)
            for line in proc.stdout:
                if not line.startswith(EVENT):
                    continue
                ev = json.loads(line[len(EVENT):])
                events[strategy].append(ev)
                extra = {"open": lambda e: f"{e['tasks']} tasks pushed",
                         "annotate": lambda e: f"{e['clicks']} clicks ({e['kept']} pre-annotations kept)",
                         "close": lambda e: (f"test Dice {e['test']['dice']:.3f}, AJI {e['test']['aji']:.3f}"
                                             if e.get("test") else "closed")}[ev["phase"]](ev)
                typer.echo(f"[{strategy}] round {ev['round']} {ev['phase']}: {extra} ({ev['seconds']:.0f} s)")

    readers = [threading.Thread(target=read, args=(s,)) for s in STRATEGIES]
    for t in readers:
        t.start()
    for t in readers:
        t.join()
    failed = []
    for strategy, (proc, log) in procs.items():
        proc.wait()
        log.close()
        if proc.returncode:
            failed.append(strategy)
    if failed:
        tail = (workdir / f"{failed[0]}.log").read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"the {', '.join(failed)} rounds failed; see {workdir / failed[0]}.log "
                           f"(last lines: {' | '.join(tail)})")
    return events


if __name__ == "__main__":  # one workspace's rounds (the demo runs two of these side by side)
    from tasks._stage import setup_logging

    setup_logging()
    run_rounds(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
