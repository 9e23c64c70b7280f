"""Stage ``points``: the saved Label Studio exports -> points tables and a report.

Inputs (paths from :data:`nucleate.io.layout.LAYOUT` / ``dvc.yaml``; hyper-parameters from ``params.yaml``
``labels`` and ``labelstudio.agreement_radius_px`` / ``consensus_min_fraction``):

* **annotations** — ``round-NNN/`` folders written by ``nucleate ls pull`` (:mod:`flows.ls_pull`): each
  holds ``export.json`` (the round's raw export, unchanged) and ``server.json`` (annotator names, deleted
  tasks). Every round folder is read, so the tables always hold every round.
* **manifest** — every task's ``image_id`` must be one of its images.

Outputs, written all or nothing:

* **out** (``points.parquet``) — every annotator's points (:func:`nucleate.annotations.collect_points`:
  the latest annotation per annotator and task; skipped tasks give none; points outside the image or
  with a label not in ``labels`` are rejected one by one).
* **consensus** (``consensus.parquet``) — one point per nucleus (a ``points`` table; images with one
  annotator keep their points, several annotators are merged by
  :func:`nucleate.annotations.consensus_table`); the ``pseudomasks`` stage trains on it.

  When the manifest has whole-slide tiles, both tables carry ``slide_id, slide_x, slide_y``
  (:data:`nucleate.io.SLIDE_POINT_FIELDS`, :func:`nucleate.slides.slide_points`): each point on a tile also in
  its slide's level-0 px (``x, y`` stay tile px); null for points of plain images.
* **report** (``points_report.json``, a DVC metrics file) — totals, and per round: tasks, finished,
  skipped, open, rejected points with reasons, deleted tasks, agreement F1 between annotators, and the
  ``finished_image_ids`` (annotated — with or without points — or skipped), which ``select`` never picks again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from nucleate.annotations.agreement import agreement, consensus_table
from nucleate.annotations.labelstudio import CollectedPoints, collect_points, task_finished
from nucleate.config import LabelStudioParams
from nucleate.io import LAYOUT, JsonStreamError, atomic_path, iter_json_array, read_table, write_table
from nucleate.io.layout import MissingInput, produced_by
from nucleate.slides import slide_points
from tasks._stage import Report, StageError, load_params_or_exit, logger, run_alone, stage_errors

__all__ = ["PointsReport", "iter_round_tasks", "read_round", "read_server", "round_folders", "run", "command", "main"]

_ROUND = re.compile(r"round-(\d{3,})")


@dataclass
class PointsReport(Report):
    """What one run did; ``rounds`` maps round number -> that round's counts (see the module docstring)."""

    out: Path
    consensus: Path
    report: Path
    points: int = 0
    consensus_points: int = 0
    rounds: dict[int, dict[str, Any]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = []
        for n, r in sorted(self.rounds.items()):
            f1 = r["agreement"]["mean_image_f1"]
            out.append(f"points: round {n}: {r['points']} points from {r['annotations']} annotation(s) on "
                       f"{r['finished']}/{r['tasks']} finished task(s) ({r['skipped_tasks']} skipped, "
                       f"{r['open']} open, {r['deleted_tasks']} deleted); {r['rejected_points']} point(s) rejected"
                       + ("" if f1 is None else f"; agreement F1 {f1:.3f} on {r['agreement']['images']} image(s)"))
        out.append(f"points: {self.points} points, {self.consensus_points} consensus points -> {self.out}, "
                   f"{self.consensus}; report {self.report}")
        return out


def round_folders(annotations: str | Path) -> dict[int, Path]:
    """Round number -> ``round-NNN`` folder under ``annotations`` (raw exports saved by ``nucleate ls pull``).

    Raises :class:`nucleate.io.layout.MissingInput` (one line naming ``annotations`` and ``nucleate ls pull``)
    when the folder is missing or holds no round folder yet.
    """
    root = Path(annotations)
    found = {int(m.group(1)): p for p in root.iterdir() if p.is_dir() and (m := _ROUND.fullmatch(p.name))} \
        if root.is_dir() else {}
    if not found:
        raise MissingInput(f"{root}: no saved Label Studio exports (round-NNN folders) yet; save them with "
                           f"{produced_by('annotations')}")
    return dict(sorted(found.items()))


def iter_round_tasks(folder: str | Path, n: int) -> Iterator[dict[str, Any]]:
    """The tasks of round ``n``'s ``folder/export.json``, one at a time (memory: one task, not the round).

    Raises :class:`tasks._stage.StageError` (one line naming the file and ``nucleate ls pull --round n``) when
    ``export.json`` is missing, not JSON or not a list; tasks before the bad spot have been yielded.
    """
    folder = Path(folder)
    export = folder / "export.json"
    if not export.is_file():
        raise StageError(f"{folder}: incomplete round folder (no export.json); save it again with "
                         f"`nucleate ls pull --round {n}`")
    try:
        yield from iter_json_array(export)
    except JsonStreamError as exc:
        raise StageError(f"{export}: not a valid Label Studio export ({exc}); save it again with "
                         f"`nucleate ls pull --round {n}`") from None


def read_server(folder: str | Path) -> dict[str, Any]:
    """``folder/server.json`` (annotator names, deleted tasks, the server's version), or {} when absent or bad."""
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads((Path(folder) / "server.json").read_text())
        return loaded if isinstance(loaded, dict) else {}
    return {}


def read_round(folder: str | Path, n: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(tasks of ``folder/export.json`` as a list, ``folder/server.json`` or {}) of round ``n``'s saved folder;
    errors as :func:`iter_round_tasks`."""
    return list(iter_round_tasks(folder, n)), read_server(folder)


def _checked(tasks: Iterable[Any], export: Path, n: int, images: set[str], manifest: Path,
             finished: set[str]) -> Iterator[dict[str, Any]]:
    """The tasks, each checked to be a dict of round ``n`` whose ``image_id`` is in the manifest (else one line
    naming it); the ``image_id`` of every finished task goes into ``finished``."""
    for k, t in enumerate(tasks):
        data = t.get("data") if isinstance(t, dict) else None
        if not isinstance(data, dict) or "id" not in t:
            raise StageError(f"{export}: entry {k} is not a Label Studio task with id and data")
        image_id = data.get("image_id")
        if image_id is None or str(image_id) not in images:
            raise StageError(f"{export}: task {t['id']}: image_id {image_id!r} is not in the manifest {manifest}; "
                             "ingest that image (`nucleate ingest`), or delete the task in Label Studio and pull "
                             "again")
        if int(data.get("round", n)) != n:
            raise StageError(f"{export}: task {t['id']} belongs to round {data.get('round')}, not {n}; save the "
                             f"rounds again with `nucleate ls pull`")
        if task_finished(t):
            finished.add(str(image_id))
        yield t


def _agreement_summary(result: CollectedPoints, labelstudio: LabelStudioParams) -> dict[str, Any]:
    full = agreement(result.points, labelstudio.agreement_radius_px, annotators=result.annotators).as_dict()
    return {k: full[k] for k in ("radius_px", "images", "mean_image_f1", "pairs")}


def run(
    labelstudio: LabelStudioParams,
    labels: tuple[str, ...],
    *,
    annotations: str | Path,
    manifest: str | Path,
    out: str | Path,
    consensus: str | Path,
    report: str | Path,
    log: logging.Logger | None = None,
) -> PointsReport:
    """Convert every saved round export under ``annotations`` into ``out`` (all annotators' points),
    ``consensus`` (one point per nucleus) and ``report`` (JSON), all or nothing.

    ``labels``: the point labels annotators may click (params ``labels``); ``labelstudio``: the agreement
    radius (pixels) and the share of annotators a consensus point needs. Raises
    :class:`nucleate.io.layout.MissingInput` when there is no saved export or no manifest, and
    :class:`tasks._stage.StageError` naming the round folder and task when an export is unusable.
    """
    log = log or logger("points")
    folders = round_folders(annotations)
    manifest = LAYOUT.require("manifest", manifest)
    out, consensus, report = Path(out), Path(consensus), Path(report)
    man = read_table("manifest", manifest)
    images = set(man.column("image_id").to_pylist())
    result = PointsReport(out, consensus, report)
    parts: list[CollectedPoints] = []
    for n, folder in folders.items():  # one round's export in memory at a time; nothing is written before the end
        server = read_server(folder)
        users = {int(k): str(v) for k, v in (server.get("annotators") or {}).items()}
        finished_ids: set[str] = set()
        tasks = _checked(iter_round_tasks(folder, n), folder / "export.json", n, images, manifest, finished_ids)
        part = collect_points(tasks, labels=labels, users=users, default_round=n)  # one task in memory at a time
        deleted = [d.get("image_id") for d in server.get("deleted_tasks") or [] if isinstance(d, dict)]
        finished = part.annotated_tasks + part.skipped_tasks
        result.rounds[n] = {
            "folder": str(folder), "label_studio": server.get("label_studio"), "pulled_at": server.get("pulled_at"),
            "tasks": part.tasks, "finished": finished, "annotated_tasks": part.annotated_tasks,
            "skipped_tasks": part.skipped_tasks, "open": part.tasks - finished, "annotations": part.annotations,
            "skipped_annotations": part.cancelled, "superseded_annotations": part.superseded,
            "points": part.points.num_rows, "rejected_points": len(part.rejected),
            "rejected": [r.line() for r in part.rejected], "deleted_tasks": len(deleted), "deleted": deleted,
            # annotated (even with no point: an image without nuclei) or skipped: `select` never picks these again
            "finished_image_ids": sorted(finished_ids),
            "agreement": _agreement_summary(part, labelstudio),
        }
        parts.append(part)
    for n, r in result.rounds.items():  # logged once every round converted: a bad round is then the only line
        for line in r["rejected"]:
            log.info("points: round %d: %s", n, line)
    merged = CollectedPoints.combine(parts)
    agreed = consensus_table(merged.points, labelstudio.agreement_radius_px, labelstudio.consensus_min_fraction,
                             annotators=merged.annotators)
    result.points, result.consensus_points = merged.points.num_rows, agreed.num_rows
    rounds = result.rounds.values()
    doc = {
        "rounds_count": len(result.rounds),
        **{k: sum(r[k] for r in rounds) for k in ("tasks", "finished", "skipped_tasks", "open", "annotations",
                                                  "rejected_points", "deleted_tasks")},
        "points": result.points, "consensus_points": result.consensus_points,
        "agreement": _agreement_summary(merged, labelstudio),
        "last_round": max(result.rounds),
        "finished_image_ids": sorted({i for r in rounds for i in r["finished_image_ids"]}),
        "rounds": {str(n): r for n, r in result.rounds.items()},
    }
    with contextlib.ExitStack() as stack:  # three temp files, renamed together only when all are written
        tmp = {name: stack.enter_context(atomic_path(path))
               for name, path in (("out", out), ("consensus", consensus), ("report", report))}
        write_table("points", slide_points(merged.points, man), tmp["out"])
        write_table("points", slide_points(agreed, man), tmp["consensus"])
        tmp["report"].write_text(json.dumps(doc, indent=2) + "\n")
    return result


def command(
    ctx: typer.Context,
    annotations: Path = typer.Option(LAYOUT.annotations, help="Folder of round-NNN exports (`nucleate ls pull`)."),
    manifest: Path = typer.Option(LAYOUT.manifest, help="Manifest table (every task's image must be in it)."),
    out: Path = typer.Option(LAYOUT.points, help="Points table to write (every annotator's points)."),
    consensus: Path = typer.Option(LAYOUT.consensus, help="Consensus points to write (one per nucleus)."),
    report: Path = typer.Option(LAYOUT.points_report, help="Report to write (JSON; a DVC metrics file)."),
    params: Path = typer.Option(Path("params.yaml"), help="params.yaml: labels, labelstudio.agreement_radius_px, "
                                "labelstudio.consensus_min_fraction."),
) -> None:
    """Turn the saved Label Studio exports into points tables (all annotators + consensus) and a report."""
    if ctx.invoked_subcommand is not None:  # `nucleate points export|import ...` (tasks.points_io)
        return
    with stage_errors():
        cfg = load_params_or_exit(params)
        result = run(cfg.labelstudio, cfg.labels, annotations=annotations, manifest=manifest, out=out,
                     consensus=consensus, report=report)
    for line in result.lines():
        typer.echo(line)


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.points [--annotations ...] ...``."""
    run_alone(command, argv)


if __name__ == "__main__":
    main()
