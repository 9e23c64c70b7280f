"""Push a round to Label Studio: display images, one task per image, pre-annotations, the in-flight table.

:func:`push` creates one task per image not yet in the project (idempotent, keyed by ``image_id``) and
records every pushed image in the in-flight table (``storage/inflight.parquet``: ``image_id``, ``round``,
``task_id``) as part of the push: after each imported batch the table is rewritten atomically (existing
rows + the batch's, one row per image), so an interrupted push leaves exactly the tasks that exist
recorded. Images that already were tasks are recorded too when missing. ``nucleate ls pull``
(:mod:`flows.ls_pull`) clears the rows of finished tasks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from flows.ls_client import Adapter
from flows.ls_connection import UncertainOutcome
from flows.s3 import S3Location, s3_location, upload_files
from nucleate.annotations.display import display_uint8
from nucleate.annotations.labelstudio import keypoint_results, prediction_points
from nucleate.config import Params
from nucleate.io import SCHEMAS, atomic_path, empty_table, read_table, table_metadata, write_table
from nucleate.slides import PoolRows, pool_tile, read_pool_image

__all__ = [
    "ImageRecord",
    "PushReport",
    "load_inflight",
    "push",
    "push_round",
    "render_images",
    "selection_round",
    "task_json",
    "update_inflight",
    "upload_images",
]

def load_inflight(path: str | Path) -> pa.Table:
    """The ``inflight`` table at ``path`` (zero rows when the file does not exist); errors name file, column, row."""
    path = Path(path)
    return read_table("inflight", path) if path.exists() else empty_table("inflight")


def update_inflight(path: str | Path, add: Iterable[tuple[str, int, int]] = (),
                    remove: Iterable[str] = ()) -> tuple[int, int]:
    """Rewrite the in-flight table at ``path`` atomically: rows whose ``image_id`` is in ``remove`` go,
    ``add`` rows ``(image_id, round, task_id)`` are appended unless the image is already listed (a listed
    image without a task id gets it). Returns ``(rows added, rows removed)``; the file is not touched
    when nothing changes."""
    path = Path(path)
    rows = {r["image_id"]: r for r in load_inflight(path).to_pylist()}
    removed = sum(rows.pop(str(image_id), None) is not None for image_id in set(map(str, remove)))
    added = filled = 0
    for image_id, round_no, task_id in add:
        row = rows.get(str(image_id))
        if row is None:
            rows[str(image_id)] = {"image_id": str(image_id), "round": int(round_no), "task_id": int(task_id)}
            added += 1
        elif row["task_id"] is None and task_id is not None:
            row["task_id"] = int(task_id)
            filled += 1
    if added or removed or filled:
        write_table("inflight", pa.Table.from_pylist(list(rows.values()), schema=SCHEMAS["inflight"]), path)
    return added, removed


@dataclass(frozen=True)
class ImageRecord:
    """One image as pushed: ``rel`` path of its display copy below the files root, size in pixels, and ``uri``:
    where Label Studio finds it when that is not the local-files root (``s3://bucket/prefix/<image_id>.png``).

    ``slide``: for a whole-slide tile, where it lies (task data keys: ``slide`` = the slide file relative to the
    image folder, ``slide_x0, slide_y0`` = the tile's top-left corner and ``slide_width0, slide_height0`` its
    extent in level-0 px, ``mpp`` = µm per tile px); None for a plain image."""

    image_id: str
    rel: str
    width: int
    height: int
    name: str
    uri: str | None = None
    slide: dict[str, Any] | None = None


@dataclass
class PushReport:
    """What a push did: task ids of new tasks, image ids that were already there, rejected predictions,
    and how many images the in-flight table gained."""

    project_id: int
    round: int
    created: dict[str, int] = field(default_factory=dict)  # image_id -> task id
    existing: dict[str, int] = field(default_factory=dict)  # image_id -> task id (untouched)
    predictions: int = 0
    rejected_predictions: list[str] = field(default_factory=list)
    inflight: Path | None = None
    inflight_added: int = 0

    def lines(self) -> list[str]:
        out = list(self.rejected_predictions)
        if self.created:
            out.append(f"push: {len(self.created)} new task(s) in round {self.round} "
                       f"({self.predictions} with pre-annotations); {len(self.existing)} already in the project")
        else:
            out.append(f"push: nothing created; all {len(self.existing)} image(s) are already tasks in project "
                       f"{self.project_id}")
        if self.inflight is not None:
            out.append(f"push: {self.inflight_added} image(s) added to {self.inflight}")
        return out


def render_images(
    manifest: pa.Table,
    image_ids: Sequence[str],
    files_root: Path,
    *,
    root: Path | None = None,
    subdir: str = "images",
) -> dict[str, ImageRecord]:
    """Write an 8-bit PNG display copy of each image (same pixel size;
    :func:`nucleate.annotations.display.display_uint8`) to ``files_root/subdir/<image_id>.png``.

    ``manifest`` gives paths (relative to its ``root`` metadata, or ``root``) and sizes. Existing copies
    are reused (the name is the content hash). A whole-slide tile's copy is the tile's pixels, read from its
    slide (:func:`nucleate.slides.read_pool_image`); its record says where it lies in the slide
    (:attr:`ImageRecord.slide`) and its name is ``slide <path> at (x0, y0)`` (level-0 px). Raises ``KeyError``
    naming an image id missing from the manifest and ``FileNotFoundError`` naming a missing image file.
    """
    root = Path(root if root is not None else table_metadata(manifest).get("root", "."))
    rows = PoolRows(manifest, ["height"])
    out_dir = Path(files_root) / subdir
    out_dir.mkdir(parents=True, exist_ok=True)
    records = {}
    for image_id in image_ids:
        if image_id not in rows:
            raise KeyError(f"image {image_id} is in the selection but not in the manifest; run `nucleate ingest`")
        row = rows[image_id]
        target = out_dir / f"{image_id}.png"
        if not target.exists():
            source = root / row["path"]
            if not source.exists():
                raise FileNotFoundError(f"{source}: image {image_id} listed in the manifest is missing")
            with atomic_path(target) as tmp:
                Image.fromarray(display_uint8(read_pool_image(root, row))).save(tmp, format="PNG")
        tile = pool_tile(row)
        name, slide = row["path"], None
        if tile is not None:
            name = f"slide {row['path']} at ({tile.x0}, {tile.y0})"
            slide = {"slide": row["path"], "slide_x0": tile.x0, "slide_y0": tile.y0, "slide_width0": tile.width0,
                     "slide_height0": tile.height0, "mpp": tile.mpp}
        records[image_id] = ImageRecord(image_id, f"{subdir}/{image_id}.png", int(row["width"]),
                                        int(row["height"]), name, slide=slide)
    return records


def upload_images(loc: S3Location, manifest: pa.Table, image_ids: Sequence[str], files_root: Path | None, *,
                  root: Path | None = None) -> dict[str, ImageRecord]:
    """:func:`render_images` then upload each display copy to ``loc`` as ``<image_id>.png`` (objects already there
    are kept: the name is the content hash). Copies are rendered under ``files_root`` (kept, reused next time),
    or in a temporary folder when it is None. Records carry the ``s3://`` URI."""
    with contextlib.ExitStack() as stack:
        where = Path(files_root) if files_root is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        records = render_images(manifest, image_ids, where, root=root)
        uris = upload_files(loc, [(where / rec.rel, f"{rec.image_id}.png") for rec in records.values()])
    return {i: dataclasses.replace(rec, uri=uris[f"{i}.png"]) for i, rec in records.items()}


def task_json(rec: ImageRecord, round: int, pred: dict[str, Any] | None, model_version: str | None,  # noqa: A002
              marker_pct: float) -> dict[str, Any]:
    """The import JSON of one task: ``data`` (image URL: ``rec.uri``, else below the local-files root; ``image_id``,
    ``round``, size in pixels, name; for a whole-slide tile also :attr:`ImageRecord.slide`'s keys) and, with
    ``pred`` (``{"xy", "label", "score"}``), one pre-annotation."""
    task: dict[str, Any] = {"data": {
        "image": rec.uri or "/data/local-files/?d=" + urllib.parse.quote(rec.rel),
        "image_id": rec.image_id, "round": int(round), "width": rec.width, "height": rec.height,
        "name": rec.name, **(rec.slide or {}),
    }}
    if pred is not None:
        scores = pred["score"]
        task["predictions"] = [{
            "model_version": model_version or "student",
            "score": float(np.mean(scores)) if scores is not None and len(scores) else None,
            "result": keypoint_results(pred["xy"], pred["label"], rec.width, rec.height, scores=scores,
                                       marker_pct=marker_pct),
        }]
    return task


def push(
    adapter: Adapter,
    project_id: int,
    records: Sequence[ImageRecord],
    *,
    round: int,  # noqa: A002 - the pipeline's word
    labels: Sequence[str] | None,
    marker_pct: float,
    predictions: pa.Table | None = None,
    model_version: str | None = None,
    inflight: str | Path | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> PushReport:
    """Create one task per image of ``records`` not yet in the project, and record them in flight.

    ``predictions``: a points table (``image_id``, ``x``, ``y``, ``label``, optional ``score``) of the
    current student; each new task gets its image's points as one pre-annotation under ``model_version``
    (points outside the image or with a label not in ``labels`` are left out, one report line each).
    ``marker_pct``: keypoint marker size, percent of the image width (``labelstudio.point_radius_pct``).
    Imports go ``adapter.batch_size`` tasks per request; a batch whose request broke is checked against the
    server before it is sent again, so nothing is created twice. ``inflight``: the in-flight table,
    rewritten after each batch (:func:`update_inflight`). ``on_batch(done, total)`` is called after each.
    """
    report = PushReport(project_id=project_id, round=int(round), inflight=Path(inflight) if inflight else None)
    current = adapter.tasks(project_id)
    existing = {str(t["data"].get("image_id")): t for t in current}
    todo, queued = [], set()
    for rec in records:
        if rec.image_id in existing:
            report.existing[rec.image_id] = int(existing[rec.image_id]["id"])
        elif rec.image_id not in queued:
            queued.add(rec.image_id)
            todo.append(rec)

    def record(rows: list[tuple[str, int, int]]) -> None:
        if inflight is not None and rows:
            report.inflight_added += update_inflight(inflight, add=rows)[0]

    record([(i, int(existing[i]["data"].get("round", round)), tid) for i, tid in report.existing.items()])
    preds: dict[str, dict[str, Any]] = {}
    if predictions is not None:
        preds, report.rejected_predictions = prediction_points(
            predictions, {r.image_id: (r.width, r.height) for r in todo}, labels)
    size = max(1, adapter.batch_size)
    batches = [todo[start:start + size] for start in range(0, len(todo), size)]

    def build(batch: list[ImageRecord]) -> list[dict[str, Any]]:
        return [task_json(rec, round, preds.get(rec.image_id), model_version, marker_pct) for rec in batch]

    # batch k+1 is built while the server imports batch k (the client's JSON work overlaps the server's)
    with ThreadPoolExecutor(max_workers=1) as pool:
        payload = build(batches[0]) if batches else []
        for k, batch in enumerate(batches):
            sending = pool.submit(_import_batch, adapter, project_id, batch, payload)
            payload = build(batches[k + 1]) if k + 1 < len(batches) else []
            ids = sending.result()
            for rec, tid in zip(batch, ids, strict=True):
                report.created[rec.image_id] = int(tid)
                report.predictions += rec.image_id in preds
            record([(rec.image_id, int(round), int(tid)) for rec, tid in zip(batch, ids, strict=True)])
            if on_batch is not None:
                on_batch(len(report.created), len(todo))
    return report


def _import_batch(adapter: Adapter, project_id: int, batch: list[ImageRecord],
                  payload: list[dict[str, Any]]) -> list[int]:
    """Import one batch; task ids in batch order. A request that broke mid-way is checked against the
    server, and only the tasks that did not land are sent again."""
    try:
        ids = adapter.import_tasks(project_id, payload)
    except UncertainOutcome:
        now = {str(t["data"].get("image_id")) for t in adapter.tasks(project_id)}
        missing = [p for p, rec in zip(payload, batch, strict=True) if rec.image_id not in now]
        if missing:
            adapter.import_tasks(project_id, missing)
        ids = []
    if len(ids) != len(batch):  # after a recovery, or a server that does not return ids: look them up
        now_ids = {str(t["data"].get("image_id")): t["id"] for t in adapter.tasks(project_id)}
        ids = [now_ids[rec.image_id] for rec in batch]
    return [int(i) for i in ids]



def push_round(
    adapter: Adapter,
    params: Params,
    manifest: pa.Table,
    image_ids: Sequence[str],
    *,
    round: int,  # noqa: A002 - the pipeline's word
    predictions: pa.Table | None = None,
    model_version: str | None = None,
    inflight: str | Path | None = None,
    root: Path | None = None,
) -> PushReport:
    """Push one round's selected ``image_ids`` into the project titled ``labelstudio.project_title`` (created
    with the ``labels`` config if missing): display copies where Label Studio serves them and the project's
    storage for them, then :func:`push`; with predictions, the project then shows ``model_version``'s.
    ``root``: folder the manifest's paths are relative to (default:
    its ``root`` metadata). ``model_version`` defaults to ``round-NNN`` when there are predictions.

    ``labelstudio.image_storage``: ``local``: copies under the connection's files root + local-files storage;
    ``s3``: copies uploaded to ``s3://s3_bucket/s3_prefix/`` (:mod:`flows.s3`; rendered under the files root
    when there is one, else in a temporary folder) + the project's S3 source storage."""
    lp = params.labelstudio
    files_root = adapter.conn.files_root
    if files_root is None and lp.image_storage == "local":
        raise ValueError("NUCLEATE_LS_FILES_ROOT is not set: point it at the server's LOCAL_FILES_DOCUMENT_ROOT "
                         "so images can be placed where Label Studio serves them (or put them in S3: "
                         "labelstudio.image_storage: s3)")
    mv = model_version or (f"round-{int(round):03d}" if predictions is not None else None)
    loc = s3_location(lp.s3_bucket, lp.s3_prefix) if lp.image_storage == "s3" else None
    project = adapter.ensure_project(lp.project_title, params.labels)
    if loc is None:
        records = render_images(manifest, image_ids, files_root, root=root)
        adapter.ensure_storage(project, files_root / "images")
    else:
        records = upload_images(loc, manifest, image_ids, files_root, root=root)
        adapter.ensure_s3_storage(project, loc, presign=lp.s3_presign)
    report = push(adapter, project, [records[i] for i in image_ids], round=round, labels=params.labels,
                  marker_pct=params.labelstudio.point_radius_pct, predictions=predictions, model_version=mv,
                  inflight=inflight)
    # after the import (Label Studio accepts only a version that exists); tasks an interrupted push created count
    if mv is not None and predictions is not None and (report.predictions or report.existing):
        adapter.set_model_version(project, mv)
    return report


def selection_round(selection: pa.Table, round: int | None) -> tuple[int, list[str]]:  # noqa: A002
    """Round ``round`` of a selection table (default: its latest) and its image ids in rank order."""
    rounds = selection.column("round").to_pylist()
    if not rounds:
        raise ValueError("the selection table is empty: nothing to push")
    r = max(rounds) if round is None else round
    rows = selection.filter(pc.equal(selection.column("round"), r))
    if not rows.num_rows:
        raise ValueError(f"the selection has no rows for round {r} (rounds present: {sorted(set(rounds))})")
    order = rows.sort_by("rank") if "rank" in rows.column_names else rows
    return r, order.column("image_id").to_pylist()
