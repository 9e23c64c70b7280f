"""Label Studio adapter: the only module that talks to Label Studio (``label_studio_sdk``).

Credentials: ``NUCLEATE_LS_URL`` + ``NUCLEATE_LS_TOKEN`` for an existing server (and
``NUCLEATE_LS_FILES_ROOT``: the server's ``LOCAL_FILES_DOCUMENT_ROOT`` as seen from this machine,
where the images annotators see are written); otherwise the local default server started by
``nucleate ls up`` (url and token from its data dir). The token is kept in a :class:`Secret` and never
appears in logs, errors or reprs.

One Label Studio project holds every round: each task's ``data`` carries ``image_id`` (the key:
pushing an image again creates nothing), ``round``, ``width``/``height`` (pixels) and ``name``.
Pure conversions (keypoint percentages <-> pixels, agreement) live in :mod:`nucleate.annotations`.

Failures: an unreachable server is retried with exponential backoff, then one
:class:`ServerUnreachable` names the URL; HTTP 401 raises :class:`TokenRejected` saying how to set
the token; any other HTTP error raises :class:`LabelStudioError` with the server's ``detail``.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
from label_studio_sdk.client import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from PIL import Image

from flows.ls_server import DEFAULT_DATA_DIR, LocalServer
from nucleate.annotations.display import display_uint8
from nucleate.annotations.labelstudio import (
    PullResult,
    collect_points,
    keypoint_results,
    labeling_config,
    point_problem,
    task_progress,
)
from nucleate.io import atomic_path, read_image, table_metadata

__all__ = [
    "Secret",
    "Connection",
    "LabelStudioError",
    "ServerUnreachable",
    "TokenRejected",
    "UncertainOutcome",
    "resolve_connection",
    "Adapter",
    "PushReport",
    "ImageRecord",
    "render_images",
]

_TASK_FIELDS = "id,data,total_annotations,cancelled_annotations,is_labeled"
_MAX_EXPORT_IDS = 900  # Django's DATA_UPLOAD_MAX_NUMBER_FIELDS is 1,000 query fields per request


class Secret:
    """A string that never shows itself: ``repr``/``str`` print ``'********'``; :meth:`reveal` returns it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self):  # pickling would be a way out of the secret
        raise TypeError("Secret values cannot be pickled")


@dataclass(frozen=True)
class Connection:
    """Where Label Studio is: ``url``, API ``token`` (legacy token or personal access token),
    ``files_root`` (its local-files document root on this machine, None if unknown) and a hint for
    error messages about where the token came from."""

    url: str
    token: Secret
    files_root: Path | None = None
    token_hint: str = "set NUCLEATE_LS_TOKEN to a valid API token (Label Studio: Account & Settings -> Access Token)"


class LabelStudioError(RuntimeError):
    """Label Studio answered with an error (the message has the server's detail, never the token)."""


class ServerUnreachable(LabelStudioError):
    """The server did not answer after all retries."""


class TokenRejected(LabelStudioError):
    """HTTP 401: the token is wrong, expired or revoked."""


class UncertainOutcome(LabelStudioError):
    """A request that changes data broke mid-way: it may or may not have taken effect."""


def resolve_connection(data_dir: str | Path = DEFAULT_DATA_DIR, env: Mapping[str, str] | None = None) -> Connection:
    """``NUCLEATE_LS_URL`` (+ ``NUCLEATE_LS_TOKEN``, ``NUCLEATE_LS_FILES_ROOT``) when set, else the local
    server of ``data_dir`` (``nucleate ls up``)."""
    env = os.environ if env is None else env
    url = env.get("NUCLEATE_LS_URL", "").strip()
    if url:
        token = env.get("NUCLEATE_LS_TOKEN", "")
        if not token:
            raise TokenRejected(
                f"NUCLEATE_LS_URL is {url} but NUCLEATE_LS_TOKEN is not set: export NUCLEATE_LS_TOKEN=<API token> "
                "(Label Studio: Account & Settings -> Access Token)"
            )
        root = env.get("NUCLEATE_LS_FILES_ROOT")
        return Connection(url.rstrip("/"), Secret(token), Path(root) if root else None)
    server = LocalServer(Path(data_dir))
    state = server.state()
    if state is None:
        raise ServerUnreachable(
            f"no Label Studio server: start the local one with `nucleate ls up` (data dir {server.data_dir}), "
            "or set NUCLEATE_LS_URL and NUCLEATE_LS_TOKEN for an existing server"
        )
    creds = server.credentials()
    return Connection(
        state["url"], Secret(creds["token"]), server.files_root.resolve(),
        token_hint=f"the local server's token is in {server.data_dir / 'credentials.json'}; if that data dir was "
        "replaced, run `nucleate ls down` then `nucleate ls up`, or set NUCLEATE_LS_URL and NUCLEATE_LS_TOKEN",
    )


@dataclass(frozen=True)
class ImageRecord:
    """One image as pushed: ``rel`` path of its display copy below the files root, size in pixels."""

    image_id: str
    rel: str
    width: int
    height: int
    name: str


@dataclass
class PushReport:
    """What a push did: task ids of new tasks, image ids that were already there, rejected predictions."""

    project_id: int
    round: int
    created: dict[str, int] = field(default_factory=dict)  # image_id -> task id
    existing: dict[str, int] = field(default_factory=dict)  # image_id -> task id (untouched)
    predictions: int = 0
    rejected_predictions: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = list(self.rejected_predictions)
        if self.created:
            out.append(f"push: {len(self.created)} new task(s) in round {self.round} "
                       f"({self.predictions} with pre-annotations); {len(self.existing)} already in the project")
        else:
            out.append(f"push: nothing created; all {len(self.existing)} image(s) are already tasks in project "
                       f"{self.project_id}")
        return out


def render_images(
    manifest: pa.Table,
    image_ids: Sequence[str],
    files_root: Path,
    *,
    root: Path | None = None,
    subdir: str = "images",
) -> dict[str, ImageRecord]:
    """Write an 8-bit PNG display copy of each image (same pixel size) to ``files_root/subdir/<image_id>.png``.

    ``manifest`` gives paths (relative to its ``root`` metadata, or ``root``) and sizes. Existing copies
    are reused (the name is the content hash). Raises ``KeyError`` naming an image id missing from the
    manifest and ``FileNotFoundError`` naming a missing image file.
    """
    root = Path(root if root is not None else table_metadata(manifest).get("root", "."))
    rows = {r["image_id"]: r for r in manifest.select(["image_id", "path", "width", "height"]).to_pylist()}
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
                Image.fromarray(display_uint8(read_image(source))).save(tmp, format="PNG")
        records[image_id] = ImageRecord(image_id, f"{subdir}/{image_id}.png", int(row["width"]),
                                        int(row["height"]), row["path"])
    return records


class Adapter:
    """Label Studio operations for annotation rounds (one SDK client, retries, clear errors)."""

    def __init__(
        self,
        conn: Connection,
        *,
        retries: int = 4,
        backoff_s: float = 0.5,
        timeout_s: float = 300.0,
        batch_size: int = 500,
        sleep: Callable[[float], None] = time.sleep,
        httpx_client: httpx.Client | None = None,
    ):
        self.conn = conn
        self.retries, self.backoff_s, self.batch_size, self._sleep = retries, backoff_s, batch_size, sleep
        self._ls = LabelStudio(
            base_url=conn.url, api_key=conn.token.reveal(), timeout=timeout_s, max_retries=0,
            **({"httpx_client": httpx_client} if httpx_client is not None else {}),
        )

    def __repr__(self) -> str:
        return f"Adapter(url={self.conn.url!r}, token={self.conn.token!r})"

    def close(self) -> None:
        """Close the HTTP connections."""
        self._ls._client_wrapper.httpx_client.httpx_client.close()

    def __enter__(self) -> Adapter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[..., Any], *args: Any, idempotent: bool = True, **kwargs: Any) -> Any:
        """Run one SDK call: retry while the server is unreachable (any transport error when the call is
        idempotent, else only failed connects: the request never left), map HTTP errors to ours."""
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self._sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return fn(*args, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last = exc
            except httpx.TransportError as exc:
                if not idempotent:
                    raise UncertainOutcome(
                        f"{what}: the connection to {self.conn.url} broke during the request "
                        f"({type(exc).__name__}); its effect is unknown, so it was not retried"
                    ) from None
                last = exc
            except ApiError as exc:
                if exc.status_code == 401:
                    raise TokenRejected(
                        f"Label Studio at {self.conn.url} rejected the token (HTTP 401: {_detail(exc)}); "
                        f"{self.conn.token_hint}"
                    ) from None
                if exc.status_code in (502, 503, 504) and idempotent:
                    last = exc
                    continue
                raise LabelStudioError(f"{what}: Label Studio at {self.conn.url} answered HTTP "
                                       f"{exc.status_code}: {_detail(exc)}") from None
        reason = type(last).__name__ if not isinstance(last, ApiError) else f"HTTP {last.status_code}"
        raise ServerUnreachable(
            f"Label Studio at {self.conn.url} is not reachable ({what}: {reason}; tried {self.retries + 1} "
            "times with backoff). Start it with `nucleate ls up`, or check NUCLEATE_LS_URL."
        ) from None

    def whoami(self) -> dict[str, Any]:
        """The token's user (checks the URL and the token)."""
        me = self._call("who am I", self._ls.users.whoami)
        return {"id": me.id, "email": me.email}

    def users(self) -> dict[int, str]:
        """User id -> e-mail (or username) of every member of the organisation."""
        return {u.id: (u.email or u.username or f"user-{u.id}") for u in self._call("list users", self._ls.users.list)}

    def ensure_user(self, email: str) -> int:
        """Id of the user with ``email``, created (without a password: an API-only annotator) if missing."""
        for uid, name in self.users().items():
            if name == email:
                return uid
        user = self._call("create user", self._ls.users.create, username=email.split("@")[0], email=email,
                          idempotent=False)
        return int(user.id)

    # -- project ----------------------------------------------------------------------------------
    def find_project(self, title: str) -> int:
        """Id of the (oldest) project called ``title``; :class:`LabelStudioError` when there is none."""
        found = [p.id for p in self._call("list projects", lambda: list(self._ls.projects.list(title=title)))
                 if p.title == title]
        if not found:
            raise LabelStudioError(f"Label Studio at {self.conn.url} has no project titled {title!r}: push a "
                                   "selection first (`nucleate ls push`), or check labelstudio.project_title")
        return int(min(found))

    def ensure_project(self, title: str, classes: Sequence[str], model_version: str | None = None) -> int:
        """Id of the project called ``title``; created with a keypoint config for ``classes``,
        ``skip_queue=IGNORE_SKIPPED`` (a skipped task counts as done) and ``model_version`` (the
        predictions the UI pre-fills). An existing project gets the config and model version updated."""
        config = labeling_config(classes)
        found = [p for p in self._call("list projects", lambda: list(self._ls.projects.list(title=title)))
                 if p.title == title]
        if not found:
            kwargs = {"model_version": model_version} if model_version else {}
            project = self._call("create project", self._ls.projects.create, title=title, label_config=config,
                                 skip_queue="IGNORE_SKIPPED", show_collab_predictions=True,
                                 show_skip_button=True, maximum_annotations=1, idempotent=False, **kwargs)
            return int(project.id)
        project = sorted(found, key=lambda p: p.id)[0]
        updates: dict[str, Any] = {}
        if project.label_config != config:
            updates["label_config"] = config
        if model_version and project.model_version != model_version:
            updates["model_version"] = model_version
        if getattr(project, "skip_queue", None) != "IGNORE_SKIPPED":
            updates["skip_queue"] = "IGNORE_SKIPPED"
        if updates:
            self._call("update project", self._ls.projects.update, id=project.id, **updates)
        return int(project.id)

    def set_overlap(self, project_id: int, annotators_per_task: int) -> None:
        """How many annotators each task goes to in the label stream (``maximum_annotations``)."""
        self._call("update project", self._ls.projects.update, id=project_id, maximum_annotations=annotators_per_task)

    def ensure_storage(self, project_id: int, folder: Path) -> int:
        """Register ``folder`` (below the server's document root) as the project's local-files storage,
        which authorises ``/data/local-files/?d=...`` URLs for its tasks. Idempotent."""
        path = str(Path(folder).resolve())
        for st in self._call("list storages", self._ls.import_storage.local.list, project=project_id):
            if st.path == path:
                return int(st.id)
        st = self._call("create storage", self._ls.import_storage.local.create, project=project_id, path=path,
                        title="nucleate images", use_blob_urls=True, idempotent=False)
        return int(st.id)

    # -- tasks ------------------------------------------------------------------------------------
    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project: ``id``, ``data``, ``total_annotations`` (submitted),
        ``cancelled_annotations`` (skipped), ``is_labeled``; paginated."""
        def fetch() -> list[dict[str, Any]]:
            pager = self._ls.tasks.list(project=project_id, fields="task_only", include=_TASK_FIELDS,
                                        page_size=max(self.batch_size, 100))
            return [{"id": t.id, "data": t.data or {}, "total_annotations": t.total_annotations or 0,
                     "cancelled_annotations": t.cancelled_annotations or 0, "is_labeled": bool(t.is_labeled)}
                    for t in pager]
        return self._call("list tasks", fetch)

    def export(self, project_id: int, task_ids: Sequence[int]) -> list[dict[str, Any]]:
        """Full task JSON (annotations included) for ``task_ids`` (see :meth:`export_pages`)."""
        return [t for page in self.export_pages(project_id, task_ids) for t in page]

    def export_pages(self, project_id: int, task_ids: Sequence[int]) -> Iterator[list[dict[str, Any]]]:
        """Full task JSON (annotations included) for ``task_ids``, one list per request of at most
        ``batch_size`` (and 900) tasks; the next page is requested while the caller works on this one.

        The server reads the subset from ``ids[]`` query parameters (SDK 2.1.2 sends ``ids``, which the
        server ignores, returning the whole project), and Django refuses more than 1,000 query fields.
        """
        ids = list(task_ids)
        step = max(1, min(self.batch_size, _MAX_EXPORT_IDS))
        pages = [[str(i) for i in ids[start:start + step]] for start in range(0, len(ids), step)]

        def fetch(page: list[str]) -> bytes:
            options = {"additional_query_parameters": {"ids[]": page}}
            return self._call("export annotations", lambda: b"".join(self._ls.projects.exports.download_sync(
                project_id, export_type="JSON", download_all_tasks=True, request_options=options)))

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(fetch, pages[0]) if pages else None
            for k, page in enumerate(pages):
                raw = pending.result()
                pending = pool.submit(fetch, pages[k + 1]) if k + 1 < len(pages) else None
                tasks = json.loads(raw)
                del raw
                wanted = set(map(int, page))
                if any(t["id"] not in wanted for t in tasks):
                    raise LabelStudioError(f"export annotations: Label Studio at {self.conn.url} returned tasks "
                                           "that were not asked for (the ids[] filter is not supported here)")
                yield tasks

    def push(
        self,
        project_id: int,
        records: Sequence[ImageRecord],
        *,
        round: int,
        predictions: pa.Table | None = None,
        model_version: str | None = None,
        classes: Sequence[str] | None = None,
        marker_pct: float = 0.6,
    ) -> PushReport:
        """Create one task per image not yet in the project (idempotent, keyed by ``image_id``).

        ``predictions``: a points table (``image_id``, ``x``, ``y``, ``label``, optional ``score``) of the
        current student; each new task gets its image's points as one pre-annotation under
        ``model_version``. Predicted points outside the image or with unknown labels are left out, one
        report line each. Imports go ``batch_size`` tasks per request; a batch whose request broke is
        checked against the server before it is sent again, so nothing is created twice.
        """
        report = PushReport(project_id=project_id, round=int(round))
        existing = {str(t["data"].get("image_id")): t["id"] for t in self.tasks(project_id)}
        todo, queued = [], set()
        for rec in records:
            if rec.image_id in existing:
                report.existing[rec.image_id] = existing[rec.image_id]
            elif rec.image_id not in queued:
                queued.add(rec.image_id)
                todo.append(rec)
        preds = _group_predictions(predictions, {r.image_id: r for r in todo}, classes, report) \
            if predictions is not None else {}
        batches = [todo[start:start + self.batch_size] for start in range(0, len(todo), self.batch_size)]

        def build(batch: list[ImageRecord]) -> list[dict[str, Any]]:
            return [self._task_json(rec, round, preds.get(rec.image_id), model_version, marker_pct) for rec in batch]

        # batch k+1 is built while the server imports batch k (the client's JSON work overlaps the server's)
        with ThreadPoolExecutor(max_workers=1) as pool:
            payload = build(batches[0]) if batches else []
            for k, batch in enumerate(batches):
                sending = pool.submit(self._import_batch, project_id, batch, payload)
                payload = build(batches[k + 1]) if k + 1 < len(batches) else []
                for rec, tid in zip(batch, sending.result(), strict=True):
                    report.created[rec.image_id] = int(tid)
                    report.predictions += rec.image_id in preds
        return report

    def _import_batch(self, project_id: int, batch: list[ImageRecord], payload: list[dict[str, Any]]) -> list[int]:
        """Import one batch; task ids in batch order. A request that broke mid-way is checked against the
        server, and only the tasks that did not land are sent again."""
        try:
            ids = self._call("import tasks", self._import, project_id, payload, idempotent=False)
        except UncertainOutcome:
            now = {str(t["data"].get("image_id")): t["id"] for t in self.tasks(project_id)}
            missing = [p for p, rec in zip(payload, batch, strict=True) if rec.image_id not in now]
            if missing:
                self._call("import tasks", self._import, project_id, missing, idempotent=False)
            ids = []
        if len(ids) != len(batch):  # after a recovery, or a server that does not return ids: look them up
            now = {str(t["data"].get("image_id")): t["id"] for t in self.tasks(project_id)}
            ids = [now[rec.image_id] for rec in batch]
        return ids

    def _import(self, project_id: int, payload: list[dict[str, Any]]) -> list[int]:
        """``POST /api/projects/{id}/import`` (synchronous in Label Studio OSS) -> the new task ids.

        Sent through the SDK's HTTP client and auth headers, but with the JSON body encoded here: the SDK's
        typed request model costs ~2.6 ms of client CPU per task with a 65-point pre-annotation, which on
        two cores slowed a 10,000-task push by ~60 %; what the server receives is the same.
        """
        wrapper = self._ls._client_wrapper
        response = wrapper.httpx_client.httpx_client.post(
            f"{wrapper.get_base_url()}/api/projects/{project_id}/import",
            params={"return_task_ids": "true"},
            content=json.dumps(payload).encode(),
            headers={**wrapper.get_headers(), "Content-Type": "application/json"},
            timeout=wrapper.get_timeout(),
        )
        if response.status_code >= 400:
            try:
                body: Any = response.json()
            except ValueError:
                body = response.text[:500]
            raise ApiError(status_code=response.status_code, headers=dict(response.headers), body=body)
        return [int(i) for i in response.json().get("task_ids") or []]

    @staticmethod
    def _task_json(rec: ImageRecord, round: int, pred: dict | None, model_version: str | None,
                   marker_pct: float) -> dict[str, Any]:
        task: dict[str, Any] = {"data": {
            "image": "/data/local-files/?d=" + urllib.parse.quote(rec.rel),
            "image_id": rec.image_id, "round": int(round), "width": rec.width, "height": rec.height,
            "name": rec.name,
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

    def progress(self, project_id: int, round: int | None = None) -> dict[str, int]:
        """``total``, ``finished`` (annotated or skipped), ``annotated``, ``skipped``, ``open`` tasks of
        ``round`` (all rounds when None)."""
        tasks = [t for t in self.tasks(project_id)
                 if round is None or int(t["data"].get("round", -1)) == int(round)]
        return task_progress(tasks)

    def pull(
        self,
        project_id: int,
        *,
        classes: Sequence[str] | None,
        rounds: Sequence[int] | None = None,
        expected_image_ids: Iterable[str] | None = None,
    ) -> PullResult:
        """Annotations of ``rounds`` (all when None) as a points table in pixels; see
        :func:`nucleate.annotations.labelstudio.collect_points` for what is kept, counted and rejected.
        ``expected_image_ids`` (the pushed selection) that have no task any more are reported as deleted."""
        tasks = self.tasks(project_id)
        wanted = None if rounds is None else {int(r) for r in rounds}
        in_round = [t for t in tasks if wanted is None or int(t["data"].get("round", -1)) in wanted]
        with_annotations = [t["id"] for t in in_round if t["total_annotations"] or t["cancelled_annotations"]]
        users = self.users()
        # page by page, so only one page of full task JSON is in memory at a time
        parts, seen = [], set()
        for page in self.export_pages(project_id, with_annotations):
            seen.update(t["id"] for t in page)
            parts.append(collect_points(page, classes=classes, users=users))
        rest = [{**t, "annotations": []} for t in in_round if t["id"] not in seen]
        parts.append(collect_points(rest, classes=classes, users=users))
        result = PullResult.combine(parts)
        if expected_image_ids is not None:
            present = {str(t["data"].get("image_id")) for t in tasks}
            result.missing_image_ids = sorted({str(i) for i in expected_image_ids} - present)
        return result

    def annotate(self, task_id: int, result: list[dict[str, Any]], *, user_id: int | None = None,
                 lead_time: float | None = None, was_cancelled: bool = False) -> int:
        """Post one annotation (as ``user_id``; default: the token's user); returns its id."""
        kwargs: dict[str, Any] = {"result": result, "was_cancelled": was_cancelled}
        if user_id is not None:
            kwargs["completed_by"] = user_id
        if lead_time is not None:
            kwargs["lead_time"] = lead_time
        ann = self._call("create annotation", self._ls.annotations.create, id=task_id, idempotent=False, **kwargs)
        return int(ann.id)

    def predictions_of(self, task_id: int) -> list[dict[str, Any]]:
        """The predictions (pre-annotations) of one task."""
        preds = self._call("list predictions", self._ls.predictions.list, task=task_id)
        return [{"id": p.id, "model_version": p.model_version, "score": p.score, "result": p.result} for p in preds]


def _detail(exc: ApiError) -> str:
    body = exc.body
    if isinstance(body, Mapping):
        detail = body.get("detail") or body.get("validation_errors") or body
        return json.dumps(detail)[:500] if not isinstance(detail, str) else detail[:500]
    return str(body)[:500]


def _group_predictions(
    predictions: pa.Table, records: Mapping[str, ImageRecord], classes: Sequence[str] | None, report: PushReport
) -> dict[str, dict[str, Any]]:
    """Predicted points of the images in ``records``: image_id -> {"xy", "label", "score"}; bad points
    are reported in ``report.rejected_predictions`` and left out."""
    for name in ("image_id", "x", "y", "label"):
        if name not in predictions.column_names:
            raise ValueError(f"predictions table has no column '{name}' (needs image_id, x, y, label[, score])")
    cols = {n: predictions.column(n).to_pylist() for n in ("image_id", "x", "y", "label")}
    scores = predictions.column("score").to_pylist() if "score" in predictions.column_names else None
    grouped: dict[str, dict[str, list]] = defaultdict(lambda: {"xy": [], "label": [], "score": []})
    for i, image_id in enumerate(cols["image_id"]):
        rec = records.get(image_id)
        if rec is None:
            continue
        x, y, label = cols["x"][i], cols["y"][i], cols["label"][i]
        problem = point_problem(float(x), float(y), label, rec.width, rec.height, classes)
        if problem:
            report.rejected_predictions.append(f"prediction row {i} (image {image_id}) left out: {problem}")
            continue
        g = grouped[image_id]
        g["xy"].append((x, y))
        g["label"].append(label)
        g["score"].append(1.0 if scores is None or scores[i] is None else float(scores[i]))
    return {k: {"xy": np.asarray(v["xy"], np.float64), "label": v["label"], "score": v["score"]}
            for k, v in grouped.items()}


