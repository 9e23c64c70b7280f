"""Annotation rounds as Prefect flows: ``open-round``, ``close-round`` and ``watch``.

``open_round`` runs ``dvc repro`` of ingest -> teacher -> select, the current student's pre-annotations
(``dvc repro predict`` when a model exists), pushes the round to Label Studio (recording it in flight), and
then, when it runs from a deployment, *suspends*: the flow run holds no process while annotators work for
hours or days. ``watch`` (a cron deployment) reads Label Studio's progress and resumes it once the round is
finished, or the ``rounds`` rule in params.yaml (a share of tasks, a deadline) says so; the resumed run closes
the round. ``close_round`` pulls the round's export (saved unchanged and ``dvc add``-ed), runs ``dvc repro`` of
points -> pseudomasks -> train -> predict -> evaluate, writes the round report, commits and tags
``round-NNN`` and ``dvc push``-es. Every data step goes through ``dvc repro`` (flows.lineage), so ``dvc.lock``
stays the one record of lineage; each is a Prefect task (the UI shows stages, logs and timings).

Where a round is lives in files, not in a process: the ledger ``storage/open_round.json`` (round number,
``selected`` / ``pushed``, the flow run waiting for it, push time) and the git tags of closed rounds. So any
step can fail or the process be killed and a rerun continues where it stopped: stages already reproduced are
skipped by DVC, a push creates only missing tasks, a pull leaves an unchanged export alone, a commit or tag
that exists is kept. One round at a time per project: a file lock while a flow works, and a second
``open-round`` while a round waits for annotators stops with a message saying which round and how to go on.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.input import RunInput

from flows import lineage
from flows.ls_connection import ServerUnreachable, UncertainOutcome
from nucleate.config import Params, RoundsParams, load_params
from nucleate.io import Layout, atomic_write_text, read_table, table_metadata

__all__ = [
    "CLOSE_STAGES",
    "FAULT_ENV",
    "InjectedFault",
    "OPEN_STAGES",
    "Project",
    "RoundBusy",
    "RoundDone",
    "RoundError",
    "close_decision",
    "close_round",
    "open_round",
    "read_ledger",
    "watch",
]

OPEN_STAGES = ("ingest", "teacher", "select")
CLOSE_STAGES = ("points", "pseudomasks", "train", "predict", "evaluate")
LOCK_FILE = ".nucleate.lock"
#: test hook: the name of a step after which the flows raise :class:`InjectedFault` (crash-safety tests)
FAULT_ENV = "NUCLEATE_FAULT_AFTER"
#: states of a flow run that still owns its round (waiting or working)
_ALIVE = {"PAUSED", "RUNNING", "PENDING", "SCHEDULED", "CANCELLING"}  # a suspended run is PAUSED ("Suspended")


class RoundError(RuntimeError):
    """A round cannot be opened or closed as asked; the message says why and what to do."""


class RoundBusy(RoundError):
    """Another round (or another flow on the same project) is in the way."""


class InjectedFault(RuntimeError):
    """Raised after a step named by ``NUCLEATE_FAULT_AFTER`` (tests of crash safety only)."""


class RoundDone(RunInput):
    """What resumes a suspended ``open-round`` run: the round and why it may close now."""

    round: int
    reason: str = "annotators finished"


@dataclass(frozen=True)
class Project:
    """A nucleate project folder: ``params.yaml``, ``dvc.yaml``, ``storage/`` (a git + DVC repository)."""

    root: Path
    params: Params
    layout: Layout

    @classmethod
    def load(cls, project: str | Path) -> Project:
        root = Path(project).resolve()
        if not (root / "dvc.yaml").is_file():
            raise RoundError(f"{root}: not a nucleate project (no dvc.yaml); create one with `nucleate init DIR`")
        return cls(root, load_params(root / "params.yaml"), Layout(root / "storage"))

    def adapter(self):
        """A Label Studio :class:`flows.ls_client.Adapter` (NUCLEATE_LS_URL/TOKEN, else the project's local
        server in ``.ls-data``)."""
        from flows.ls_client import Adapter
        from flows.ls_connection import resolve_connection
        from flows.ls_server import DEFAULT_DATA_DIR

        p = self.params.labelstudio
        conn = resolve_connection(self.root / DEFAULT_DATA_DIR)
        return Adapter(conn, retries=p.retries, backoff_s=p.retry_backoff_s, batch_size=p.batch_size)


# --- the ledger: which round is open ------------------------------------------------------------------------

def read_ledger(layout: Layout) -> dict[str, Any] | None:
    """The open round's ledger (``storage/open_round.json``), or None when no round is open."""
    path = layout.open_round
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        int(doc["round"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RoundError(f"{path}: unreadable round ledger ({exc}); if no round is open, delete it") from None
    return doc


def _write_ledger(layout: Layout, doc: dict[str, Any]) -> None:
    layout.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(layout.open_round, json.dumps(doc, indent=2, sort_keys=True) + "\n")


def _clear_ledger(layout: Layout, round: int) -> None:  # noqa: A002
    doc = read_ledger(layout)
    if doc is not None and int(doc["round"]) == int(round):
        layout.open_round.unlink()


# --- helpers ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def project_lock(root: Path, what: str) -> Iterator[None]:
    """Hold the project's lock file (``.nucleate.lock``) while a flow works; :class:`RoundBusy` naming the
    holder when another flow has it."""
    path = root / LOCK_FILE
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise RoundBusy(f"{root}: {holder} is working on this project; one round flow at a time per project "
                            "- wait for it to finish") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{what} (pid {os.getpid()}, since {_now()})\n")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


def _done(step: str) -> None:
    """Mark a step finished (crash-safety tests inject a failure here via ``NUCLEATE_FAULT_AFTER``)."""
    if os.environ.get(FAULT_ENV) == step:
        raise InjectedFault(f"fault injected after step '{step}' ({FAULT_ENV})")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _this_run() -> str | None:
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


def _from_deployment() -> bool:
    from prefect.runtime import deployment

    return deployment.id is not None


def _run_state(run_id: str | None) -> str | None:
    """State type name of flow run ``run_id`` (``SUSPENDED``, ``COMPLETED``, ...), None when unknown."""
    if not run_id:
        return None
    from uuid import UUID

    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(run_id)).state
    except Exception:  # noqa: BLE001 - a run another Prefect server knows: nobody here owns the round
        return None
    return state.type.name if state is not None else None


def _retry_network(task, task_run, state) -> bool:  # noqa: ARG001 - Prefect's retry_condition_fn signature
    """Retry a Label Studio step only when the server did not answer (not on a rejected token or bad input)."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, ServerUnreachable | UncertainOutcome | ConnectionError)


def _selection_round(layout: Layout) -> tuple[int, list[str]]:
    from flows.ls_push import selection_round

    return selection_round(read_table("selection", layout.require("selection")), None)


# --- tasks --------------------------------------------------------------------------------------------------

@task(task_run_name="dvc repro {stage}")
def repro_stage(project: str, stage: str) -> bool:
    """``dvc repro <stage>`` in ``project`` (True when something ran); its output goes to the run log."""
    return lineage.repro(stage, Path(project), log=get_run_logger())


@task(name="push to Label Studio", retries=2, retry_delay_seconds=[10, 30], retry_condition_fn=_retry_network)
def push_task(project: str, round: int, image_ids: list[str], with_predictions: bool) -> dict[str, Any]:  # noqa: A002
    """Push round ``round``'s images (idempotent) with the student's points as pre-annotations."""
    from flows.ls_push import push_round

    proj = Project.load(project)
    log = get_run_logger()
    manifest = read_table("manifest", proj.layout.require("manifest"))
    root = Path(table_metadata(manifest).get("root", "."))
    preds = None
    if with_predictions:
        preds = read_table("predicted_points", proj.layout.require("predictions") / "points.parquet")
    with proj.adapter() as adapter:
        report = push_round(adapter, proj.params, manifest, image_ids, round=round, predictions=preds,
                            inflight=proj.layout.inflight, root=root if root.is_absolute() else proj.root / root)
        url = f"{adapter.conn.url}/projects/{report.project_id}/data"
    for line in report.lines():
        log.info(line)
    log.info("annotate at %s", url)
    return {"project_id": report.project_id, "tasks": len(report.created) + len(report.existing),
            "created": len(report.created), "url": url}


@task(name="pull from Label Studio", retries=2, retry_delay_seconds=[10, 30], retry_condition_fn=_retry_network)
def pull_task(project: str, round: int) -> dict[str, Any]:  # noqa: A002
    """Save round ``round``'s raw export under storage/annotations/round-NNN (unchanged export: untouched)."""
    from flows.ls_pull import pull

    proj = Project.load(project)
    log = get_run_logger()
    with proj.adapter() as adapter:
        pid = adapter.find_project(proj.params.labelstudio.project_title)
        report = pull(adapter, pid, annotations=proj.layout.annotations, rounds=[round],
                      inflight=proj.layout.inflight, log=log)
    for line in report.lines()[:-1]:
        log.info(line)
    (rp,) = report.rounds
    return {"tasks": rp.tasks, "finished": rp.finished, "skipped": rp.skipped, "changed": rp.changed}


@task(name="Label Studio progress", retries=2, retry_delay_seconds=[10, 30], retry_condition_fn=_retry_network)
def progress_task(project: str, round: int) -> dict[str, int]:  # noqa: A002
    proj = Project.load(project)
    with proj.adapter() as adapter:
        pid = adapter.find_project(proj.params.labelstudio.project_title)
        return adapter.progress(pid, round)


@task(name="round report")
def report_task(project: str, round: int) -> list[str]:  # noqa: A002
    """Write storage/reports/round-NNN.md (+ the learning-curve PNG) and the Prefect artifacts."""
    from flows.report import round_report

    proj = Project.load(project)
    report = round_report(proj.root, round, proj.params)
    paths = report.write(proj.layout.reports)
    report.publish()
    return [str(p) for p in paths]


@task(name="commit + tag round")
def commit_task(project: str, round: int, message: str) -> str | None:  # noqa: A002
    root = Path(project)
    rel = Layout(Path("storage"))
    paths = ["dvc.lock", "dvc.yaml", "params.yaml", ".gitignore", str(rel.root / ".gitignore"),
             str(rel.annotations / ".gitignore"), f"{rel.round_dir(round)}.dvc", str(rel.reports),
             # the stages' metrics and plots (`cache: false` in dvc.yaml): git holds them
             str(rel.points_report), str(rel.pseudomask_qc), str(rel.metrics), str(rel.plots)]
    sha = lineage.commit_round(root, round, [p for p in paths if (root / p).exists()], message)
    _done("commit")
    lineage.tag_round(root, round)
    return sha


@task(name="dvc push", retries=2, retry_delay_seconds=[10, 30])
def dvc_push_task(project: str) -> bool:
    return lineage.push(Path(project), log=get_run_logger())


# --- the close rule -----------------------------------------------------------------------------------------

def close_decision(progress: dict[str, int], pushed_at: str | None, rule: RoundsParams,
                   now: datetime | None = None) -> tuple[bool, str]:
    """May the round close now? ``progress``: Label Studio task counts of the round (``total``,
    ``finished``); ``pushed_at``: ISO time of the push; ``rule``: params ``rounds``. Returns (yes, why)."""
    total, finished = int(progress.get("total", 0)), int(progress.get("finished", 0))
    if total == 0:
        return False, "the round has no tasks in Label Studio"
    share = finished / total
    if share >= rule.min_finished_fraction:
        return True, f"{finished}/{total} tasks finished (at least {rule.min_finished_fraction:.0%} of them)"
    if rule.deadline_hours > 0 and pushed_at:
        due = datetime.fromisoformat(pushed_at.replace("Z", "+00:00")) + timedelta(hours=rule.deadline_hours)
        now = now or datetime.now(UTC)
        if now >= due:
            if finished == 0:
                return False, f"deadline {due:%Y-%m-%d %H:%M} UTC passed but no task is finished yet"
            return True, f"deadline {due:%Y-%m-%d %H:%M} UTC passed with {finished}/{total} tasks finished"
        return False, (f"{finished}/{total} tasks finished; waiting for {rule.min_finished_fraction:.0%} of them "
                       f"or the deadline {due:%Y-%m-%d %H:%M} UTC")
    return False, f"{finished}/{total} tasks finished; waiting for {rule.min_finished_fraction:.0%} of them"


# --- flows --------------------------------------------------------------------------------------------------

@flow(name="open-round")
def open_round(project: str = ".", wait: bool = True) -> dict[str, Any]:
    """Open the next round of ``project``: ingest -> teacher -> select -> pre-annotations -> push.

    Run from a deployment with ``wait`` (the default), the flow then suspends until ``watch`` resumes it (or
    someone presses Resume in the UI) and closes the round; run directly, it returns once the round is in
    Label Studio (close it later with ``close_round`` / ``nucleate round close``).
    """
    proj = Project.load(project)
    log = get_run_logger()
    me = _this_run()
    with project_lock(proj.root, f"open-round (flow run {me})"):
        ledger = read_ledger(proj.layout)
        if ledger is not None and int(ledger["round"]) in lineage.closed_rounds(proj.root):
            log.info("round %d was closed; finishing its leftovers", ledger["round"])
            dvc_push_task(str(proj.root))
            _clear_ledger(proj.layout, int(ledger["round"]))
            ledger = None
        if ledger is not None and ledger.get("status") == "pushed" and ledger.get("flow_run_id") != me:
            owner = ledger.get("flow_run_id")
            state = _run_state(owner)
            if state in _ALIVE or state == "COMPLETED":
                raise RoundBusy(
                    f"round {ledger['round']} is already open (pushed {ledger.get('pushed_at')}, "
                    f"{ledger.get('tasks')} tasks; flow run {owner} is {state or 'unknown'}): one round at a time - "
                    "annotate it in Label Studio; it closes when `watch` sees it done, or run `nucleate round close`")
            log.info("round %d was pushed by flow run %s (%s); this run takes it over", ledger["round"], owner, state)
        if ledger is None:
            for stage in OPEN_STAGES:
                repro_stage(str(proj.root), stage)
                _done(stage)
            r, image_ids = _selection_round(proj.layout)
            if r in lineage.closed_rounds(proj.root):
                raise RoundError(f"the selection is for round {r}, which is already closed (tag "
                                 f"{lineage.round_tag(r)}); run `dvc repro select` and check storage/points.parquet")
            ledger = {"round": r, "status": "selected", "images": image_ids, "flow_run_id": me}
            _write_ledger(proj.layout, ledger)
        r = int(ledger["round"])
        if ledger.get("status") != "pushed" or ledger.get("flow_run_id") != me:
            with_predictions = (proj.layout.model / "student.pt").is_file()
            if with_predictions:
                repro_stage(str(proj.root), "predict")
            _done("preannotate")
            pushed = push_task(str(proj.root), r, list(ledger["images"]), with_predictions)
            ledger.update(status="pushed", flow_run_id=me, pushed_at=ledger.get("pushed_at") or _now(),
                          tasks=pushed["tasks"], url=pushed["url"])
            _write_ledger(proj.layout, ledger)
            _done("push")
    if wait and _from_deployment():
        from prefect.flow_runs import suspend_flow_run

        log.info("round %d: waiting for annotators (%s); this run is suspended and holds no process", r,
                 ledger.get("url"))
        done = suspend_flow_run(wait_for_input=RoundDone, key=f"round-{r:03d}", timeout=None)
        log.info("round %d resumed: %s", r, done.reason if done else "resumed by hand")
        return close_round(str(proj.root), r)
    return {"round": r, "status": "open", "tasks": ledger.get("tasks"), "url": ledger.get("url")}


@flow(name="close-round")
def close_round(project: str = ".", round: int | None = None) -> dict[str, Any]:  # noqa: A002
    """Close ``round`` (default: the open one): pull -> ``dvc add`` the export -> points -> pseudomasks -> train
    -> predict -> evaluate -> report -> commit + tag ``round-NNN`` -> ``dvc push``."""
    proj = Project.load(project)
    log = get_run_logger()
    root = str(proj.root)
    with project_lock(proj.root, f"close-round (flow run {_this_run()})"):
        if not lineage.is_repo(proj.root):
            raise RoundError(f"{proj.root}: not a git repository; closing a round commits and tags it - create the "
                             "project with `nucleate init DIR`")
        ledger = read_ledger(proj.layout)
        if round is None:
            if ledger is None:
                raise RoundError("no round is open (storage/open_round.json); open one with `nucleate round open`")
            round = int(ledger["round"])  # noqa: A001
        if round in lineage.closed_rounds(proj.root):
            log.info("round %d is already closed (tag %s)", round, lineage.round_tag(round))
            dvc_push_task(root)
            _done("dvc_push")
            _clear_ledger(proj.layout, round)
            return {"round": round, "status": "closed", "commit": None}
        pulled = pull_task(root, round)
        if pulled["finished"] == 0:
            raise RoundError(f"round {round}: none of its {pulled['tasks']} tasks is finished in Label Studio; "
                             "annotate (or skip) some first")
        _done("pull")
        lineage.track(proj.layout.round_dir(round), proj.root, log=log)
        _done("track")
        for stage in CLOSE_STAGES:
            repro_stage(root, stage)
            _done(stage)
        report_task(root, round)
        _done("report")
        metrics = _test_metrics(proj.layout)
        message = (f"round {round:03d}: {pulled['finished']} of {pulled['tasks']} tasks finished"
                   + (f"; test Dice {metrics['dice']:.3f}, AJI {metrics['aji']:.3f}" if metrics else ""))
        sha = commit_task(root, round, message)
        _done("tag")
        dvc_push_task(root)
        _done("dvc_push")
        _clear_ledger(proj.layout, round)
    log.info("round %d closed: %s (tag %s)", round, message, lineage.round_tag(round))
    return {"round": round, "status": "closed", "commit": sha, "test": metrics}


def _test_metrics(layout: Layout) -> dict[str, float] | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        split = json.loads(layout.metrics.read_text())["splits"]["test"]
        return {k: float(split[k]) for k in ("dice", "aji", "pq")}
    return None


@flow(name="watch")
def watch(project: str = ".") -> dict[str, Any]:
    """Read Label Studio's progress of the open round; when the ``rounds`` rule of params.yaml says it may
    close, resume the suspended ``open-round`` run waiting for it (or, when none waits, close it here)."""
    proj = Project.load(project)
    log = get_run_logger()
    ledger = read_ledger(proj.layout)
    if ledger is None or ledger.get("status") != "pushed":
        log.info("no round is waiting for annotators")
        return {"round": None, "action": "none", "reason": "no round is waiting for annotators"}
    r = int(ledger["round"])
    progress = progress_task(str(proj.root), r)
    ready, why = close_decision(progress, ledger.get("pushed_at"), proj.params.rounds)
    log.info("round %d: %s", r, why)
    if not ready:
        return {"round": r, "action": "wait", "reason": why, "progress": progress}
    owner = ledger.get("flow_run_id")
    state = _run_state(owner)
    if state == "PAUSED":  # suspended (or paused) waiting for this round
        from prefect.flow_runs import resume_flow_run

        resume_flow_run(owner, run_input=RoundDone(round=r, reason=why).model_dump())
        log.info("round %d: resumed flow run %s", r, owner)
        return {"round": r, "action": "resumed", "reason": why, "flow_run_id": owner}
    if state in _ALIVE:
        return {"round": r, "action": "none", "reason": f"flow run {owner} is {state} on this round"}
    result = close_round(str(proj.root), r)
    return {"round": r, "action": "closed", "reason": why, "result": result}
