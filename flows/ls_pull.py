"""Pull rounds from Label Studio: save each round's raw export unchanged, clear finished in-flight rows.

For each round, ``storage/annotations/round-NNN/`` (:meth:`nucleate.io.Layout.round_dir`) holds::

    export.json        the JSON export of every task of the round (annotated, skipped or open), exactly
                       the bytes the server sent (several export pages are joined into one JSON list)
    label_config.xml   the project's labeling config, as the server stores it
    server.json        Label Studio version (server and SDK), URL (never a token), project id, round,
                       pulled_at (UTC), annotators (user id -> e-mail of those in the export) and
                       deleted_tasks (pushed images whose task no longer exists)

Pull converts nothing: the ``points`` stage (``tasks/points.py``) turns these folders into points tables,
so a conversion fix can be replayed on old rounds and ``dvc.lock`` records which export made the masks.
A round folder is written to a staging folder and renamed into place; the previous one stays until the
new one is complete, and a round whose export did not change is left untouched (its files keep their
hashes). Everything under ``storage/annotations`` is owner-only (folders 0700, files 0600): exports
name annotators.

After saving, rows of finished tasks (annotated or skipped) and of deleted tasks leave the in-flight
table; unfinished ones stay.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import logging
import os
import stat
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from flows.ls_client import Adapter, ExportPage
from flows.ls_connection import LabelStudioError
from flows.ls_push import load_inflight, update_inflight
from nucleate.annotations.labelstudio import task_finished
from nucleate.io import LAYOUT, atomic_dir, atomic_write_text
from nucleate.io.atomic import KeepPrevious

__all__ = ["PullReport", "RoundPull", "pull", "owner_only"]

EXPORT, LABEL_CONFIG, SERVER = "export.json", "label_config.xml", "server.json"


@dataclass
class RoundPull:
    """One round as pulled: task counts and whether its folder changed."""

    round: int
    path: Path
    tasks: int = 0
    finished: int = 0
    skipped: int = 0
    deleted: int = 0
    changed: bool = True

    def line(self) -> str:
        if not self.tasks:
            return f"pull: round {self.round}: all {self.deleted} task(s) were deleted in Label Studio; nothing saved"
        what = "saved" if self.changed else "unchanged"
        return (f"pull: round {self.round}: {self.tasks} task(s), {self.finished} finished ({self.skipped} skipped), "
                f"{self.tasks - self.finished} open, {self.deleted} deleted -> {self.path} ({what})")


@dataclass
class PullReport:
    """What a pull saved and cleared."""

    project_id: int
    rounds: list[RoundPull] = field(default_factory=list)
    inflight: Path | None = None
    inflight_cleared: int = 0
    inflight_left: int = 0

    def lines(self) -> list[str]:
        out = [r.line() for r in self.rounds]
        if self.inflight is not None:
            out.append(f"pull: {self.inflight_cleared} finished or deleted task(s) cleared from {self.inflight}; "
                       f"{self.inflight_left} still in flight")
        out.append("next: `nucleate points` (or `dvc repro points`) turns the saved exports into points tables")
        return out


def owner_only(path: Path) -> None:
    """Make ``path`` readable by its owner only (folders 0700, files 0600)."""
    os.chmod(path, 0o700 if path.is_dir() else 0o600)


def _public_url(url: str) -> str:
    """``url`` without user info, query or fragment (a token must never be saved)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def pull(
    adapter: Adapter,
    project_id: int,
    *,
    annotations: str | Path,
    rounds: Sequence[int] | None = None,
    inflight: str | Path | None = None,
    log: logging.Logger | None = None,
) -> PullReport:
    """Save the raw export of ``rounds`` (default: every round with tasks or in-flight rows) in
    ``annotations/round-NNN`` (:meth:`nucleate.io.Layout.round_dir`), then clear finished and deleted tasks
    from the ``inflight`` table.

    Raises :class:`flows.ls_connection.LabelStudioError` for a requested round with no tasks (naming the
    rounds present); nothing is written for the rounds not yet saved when the server fails mid-way.
    """
    log = log or logging.getLogger("nucleate.ls")
    report = PullReport(project_id=project_id, inflight=Path(inflight) if inflight is not None else None)
    tasks = adapter.tasks(project_id)
    by_round: dict[int, list[int]] = {}
    for t in tasks:
        by_round.setdefault(int(t["data"].get("round", 0)), []).append(int(t["id"]))
    flying = load_inflight(inflight).to_pylist() if inflight is not None else []
    present = {str(t["data"].get("image_id")) for t in tasks}
    deleted_rows = [r for r in flying if r["image_id"] not in present]
    if rounds is None:
        wanted = sorted(set(by_round) | {int(r["round"]) for r in deleted_rows})
    else:
        wanted = sorted({int(r) for r in rounds})
        absent = [r for r in wanted if r not in by_round and not any(d["round"] == r for d in deleted_rows)]
        if absent:
            raise LabelStudioError(f"project {project_id} at {adapter.conn.url} has no task in round {absent[0]} "
                                   f"(rounds with tasks: {', '.join(map(str, sorted(by_round))) or 'none'})")
    if not wanted:
        raise LabelStudioError(f"project {project_id} at {adapter.conn.url} has no tasks yet: push a selection "
                               "first (`nucleate ls push`)")
    context = {"url": _public_url(adapter.conn.url), "project_id": int(project_id),
               **adapter.server_version()}
    config = adapter.label_config(project_id)
    users = adapter.users()
    root = Path(annotations)
    _private_dir(root, log)

    def round_dir(n: int) -> Path:
        return root / LAYOUT.round_dir(n).name

    finished: set[str] = set()
    for n in wanted:
        gone = [{"image_id": r["image_id"], "task_id": r["task_id"]} for r in deleted_rows if r["round"] == n]
        if n not in by_round:  # every task of the round was deleted: nothing to save
            report.rounds.append(RoundPull(n, round_dir(n), deleted=len(gone), changed=False))
            continue
        rp, done = _save_round(adapter, project_id, n, by_round[n], round_dir(n), config=config,
                               users=users, context=context, deleted=gone, present=present)
        finished |= done
        report.rounds.append(rp)
    if inflight is not None:
        pulled = set(wanted)
        remove = finished | {r["image_id"] for r in deleted_rows if r["round"] in pulled}
        report.inflight_cleared = update_inflight(inflight, remove=remove)[1]
        report.inflight_left = load_inflight(inflight).num_rows
    return report


def _private_dir(path: Path, log: logging.Logger) -> None:
    """Create ``path`` owner-only; an existing one readable by others is made owner-only, with one line."""
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
        owner_only(path)
    elif stat.S_IMODE(path.stat().st_mode) & 0o077:
        owner_only(path)
        log.warning("pull: %s was open to other users; made it owner-only (0700): exports name annotators", path)


def _save_round(adapter: Adapter, project_id: int, n: int, task_ids: list[int], target: Path, *,
                config: str, users: dict[int, str], context: dict[str, Any],
                deleted: list[dict[str, Any]], present: set[str]) -> tuple[RoundPull, set[str]]:
    """Export round ``n`` into a staging folder beside ``target`` and swap it in (unless unchanged).
    Returns the round's counts and the image ids of its finished tasks."""
    rp = RoundPull(n, target, deleted=len(deleted))
    finished: set[str] = set()
    annotators: set[int] = set()
    with atomic_dir(target) as staging:
        staging.chmod(0o700)
        with open(_new_private(staging / EXPORT), "wb") as fh:
            for page in _write_export(fh, adapter.export_pages(project_id, task_ids)):
                for t in page.tasks:
                    rp.tasks += 1
                    if task_finished(t):
                        rp.finished += 1
                        finished.add(str((t.get("data") or {}).get("image_id")))
                        rp.skipped += int(t.get("total_annotations") or 0) == 0
                    for a in t.get("annotations") or []:
                        who = a.get("completed_by")
                        who = who.get("id") if isinstance(who, dict) else who
                        if who is not None:
                            annotators.add(int(who))
            fh.flush()
            os.fsync(fh.fileno())
        _write_private(staging / LABEL_CONFIG, config)
        previous = _read_json(target / SERVER)
        # deleted tasks found by earlier pulls (their in-flight rows are gone now) stay listed
        kept = [d for d in previous.get("deleted_tasks", []) if d not in deleted and d["image_id"] not in present]
        server = {**context, "round": n, "tasks": rp.tasks,
                  "annotators": {str(u): users.get(u, f"user-{u}") for u in sorted(annotators)},
                  "deleted_tasks": sorted(deleted + kept, key=lambda d: d["image_id"])}
        rp.deleted = len(server["deleted_tasks"])
        if target.is_dir() and _same(staging, target, server, previous):
            rp.changed = False
            raise KeepPrevious  # the saved round is already this export: leave it (and its pulled_at) alone
        _write_private(staging / SERVER, json.dumps({**server, "pulled_at": _now()}, indent=2) + "\n")
    return rp, finished


def _write_export(fh: BinaryIO, pages: Iterable[ExportPage]) -> Iterable[ExportPage]:
    """Write export pages to ``fh`` as one JSON list, yielding each page once written. One page is written
    byte for byte; several are joined (each task's bytes unchanged, ``,`` between them)."""
    first = b""
    count, wrote = 0, False
    for page in pages:
        count += 1
        if count == 1:
            first = page.raw
        else:
            if count == 2:
                fh.write(b"[")
                body = _inner(first)
                fh.write(body)
                wrote = bool(body)
            body = _inner(page.raw)
            if body:
                fh.write((b"," if wrote else b"") + body)
                wrote = True
        yield page
    if count == 0:
        fh.write(b"[]")
    elif count == 1:
        fh.write(first)
    else:
        fh.write(b"]")


def _inner(raw: bytes) -> bytes:
    text = raw.strip()
    if not (text.startswith(b"[") and text.endswith(b"]")):
        raise LabelStudioError("export annotations: the server's answer is not a JSON list of tasks")
    return text[1:-1].strip()


def _new_private(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 (before any content is written)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    return path


def _write_private(path: Path, text: str) -> None:
    atomic_write_text(path, text)  # a temp file from mkstemp: 0600
    owner_only(path)


def _read_json(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return {}


def _same(staging: Path, target: Path, server: dict[str, Any], previous: dict[str, Any]) -> bool:
    """True when the saved round ``target`` holds the same export, config and server facts (``pulled_at``
    aside) as the new one in ``staging``."""
    old = {k: v for k, v in previous.items() if k != "pulled_at"}
    return (old == server and (target / LABEL_CONFIG).is_file() and (target / EXPORT).is_file()
            and filecmp.cmp(staging / LABEL_CONFIG, target / LABEL_CONFIG, shallow=False)
            and filecmp.cmp(staging / EXPORT, target / EXPORT, shallow=False))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
