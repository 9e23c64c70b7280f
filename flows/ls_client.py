"""Label Studio API calls with retries and clear errors: the only module that calls ``label_studio_sdk``.

:class:`Adapter` wraps one SDK client (``label_studio_sdk.client.LabelStudio``) on an ``httpx.Client``
it owns. Every call goes through :meth:`Adapter._call`: an unreachable server is retried with
exponential backoff, then one :class:`ServerUnreachable` names the URL; HTTP 401 raises
:class:`TokenRejected` saying how to set the token; any other HTTP error raises
:class:`LabelStudioError` with the server's ``detail``. A request that changes data and broke mid-way
raises :class:`UncertainOutcome` instead of being sent again.

One Label Studio project holds every round: each task's ``data`` carries ``image_id`` (the key: one task
per image), ``round``, ``width``/``height`` (pixels) and ``name``. What is pushed and pulled is decided in
:mod:`flows.ls_push` and :mod:`flows.ls_pull`; pure conversions live in :mod:`nucleate.annotations`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx
from label_studio_sdk.client import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from flows.ls_connection import (
    Connection,
    LabelStudioError,
    ServerUnreachable,
    TokenRejected,
    UncertainOutcome,
)
from flows.s3 import S3Location
from nucleate.annotations.labelstudio import labeling_config, task_progress

__all__ = ["Adapter", "ExportPage"]

_TASK_FIELDS = "id,data,total_annotations,cancelled_annotations,is_labeled"
_MAX_EXPORT_IDS = 900  # Django's DATA_UPLOAD_MAX_NUMBER_FIELDS is 1,000 query fields per request


class ExportPage:
    """One export request's answer: ``raw`` (the exact bytes the server sent, a JSON list of tasks) and
    ``tasks`` (the same, parsed)."""

    __slots__ = ("raw", "tasks")

    def __init__(self, raw: bytes, tasks: list[dict[str, Any]]):
        self.raw, self.tasks = raw, tasks


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
        self._owns_http = httpx_client is None
        self._http = httpx_client or httpx.Client(timeout=timeout_s, follow_redirects=True)
        self._timeout_s = timeout_s
        self._ls = LabelStudio(base_url=conn.url, api_key=conn.token.reveal(), timeout=timeout_s, max_retries=0,
                               httpx_client=self._http)

    def __repr__(self) -> str:
        return f"Adapter(url={self.conn.url!r}, token={self.conn.token!r})"

    def close(self) -> None:
        """Close the HTTP connections (of the ``httpx.Client`` this adapter made; a given one is the caller's)."""
        if self._owns_http:
            self._http.close()

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

    # -- server and users -------------------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        """The token's user (checks the URL and the token)."""
        me = self._call("who am I", self._ls.users.whoami)
        return {"id": me.id, "email": me.email}

    def server_version(self) -> dict[str, Any]:
        """``{"label_studio": release, "edition": ..., "sdk": label-studio-sdk version}`` (``GET /api/version``)."""
        v = self._call("server version", self._ls.versions.get)
        try:
            sdk = version("label-studio-sdk")
        except PackageNotFoundError:
            sdk = None
        package = getattr(v, "label_studio_os_package", None) or {}
        release = v.release or (package.get("version") if isinstance(package, Mapping) else None)
        return {"label_studio": release, "edition": getattr(v, "edition", None), "sdk": sdk}

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

    def ensure_project(self, title: str, labels: Sequence[str], model_version: str | None = None) -> int:
        """Id of the project called ``title``; created with a keypoint config for ``labels`` (params
        ``labels``), ``skip_queue=IGNORE_SKIPPED`` (a skipped task counts as done) and ``model_version``
        (the predictions the UI pre-fills). An existing project gets the config and model version updated."""
        config = labeling_config(labels)
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

    def set_model_version(self, project_id: int, model_version: str) -> None:
        """Make ``model_version`` the predictions the project's editor shows (and records on each annotation as
        the prediction it started from). Label Studio accepts only a version some prediction of the project
        has, so call it after importing them."""
        project = self._call("get project", self._ls.projects.get, id=project_id)
        if project.model_version != model_version:
            self._call("update project", self._ls.projects.update, id=project_id, model_version=model_version)

    def delete_project(self, project_id: int) -> None:
        """Delete a project with its tasks and annotations (the demo's reset; never called by the rounds)."""
        self._call("delete project", self._ls.projects.delete, id=project_id)

    def label_config(self, project_id: int) -> str:
        """The project's labeling config (XML), as the server stores it."""
        return str(self._call("get project", self._ls.projects.get, id=project_id).label_config or "")

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

    def ensure_s3_storage(self, project_id: int, loc: S3Location, *, presign: bool = False) -> int:
        """Connect the project to S3 source storage ``loc`` (bucket, prefix, endpoint, key: :mod:`flows.s3`), which
        lets Label Studio resolve the ``s3://`` image URIs of its tasks for the browser: with ``presign`` False it
        streams the object itself (``/tasks/<id>/resolve/?fileuri=...``: browsers need to reach only Label
        Studio), with True it redirects to a presigned S3 URL. Idempotent; an existing storage of the same bucket
        and prefix gets the current key and settings (a rotated key takes effect).

        The storage only resolves URLs: it is not synchronizable (tasks come from push, one per image with its
        ``image_id``; a sync would add duplicates without one) and its regex filter admits only the display PNGs.
        Label Studio keeps the key in its database and never returns it; it must have the prefix's objects already
        (it lists them to check the connection), so upload first.
        """
        settings: dict[str, Any] = {
            "bucket": loc.bucket, "prefix": loc.prefix, "regex_filter": r".*\.png$", "use_blob_urls": True,
            "presign": presign, "presign_ttl": 15, "recursive_scan": False, "synchronizable": False,
            "title": "nucleate images (S3)", "region_name": loc.region,
        }
        if loc.endpoint:
            settings["s3endpoint"] = loc.endpoint
        if loc.access_key_id:
            settings["aws_access_key_id"] = loc.access_key_id
        if loc.secret_access_key:
            settings["aws_secret_access_key"] = loc.secret_access_key.reveal()
        if loc.session_token:
            settings["aws_session_token"] = loc.session_token.reveal()
        secrets = [s.reveal() for s in (loc.secret_access_key, loc.session_token) if s]
        try:
            for st in self._call("list S3 storages", self._ls.import_storage.s3.list, project=project_id):
                if st.bucket == loc.bucket and (st.prefix or "") == loc.prefix:
                    self._call(f"update S3 storage {loc.where()}", self._ls.import_storage.s3.update, id=st.id,
                               **settings)
                    return int(st.id)
            st = self._call(f"connect S3 storage {loc.where()}", self._ls.import_storage.s3.create,
                            project=project_id, idempotent=False, **settings)
        except LabelStudioError as exc:  # the server's detail never echoes the key, but make sure
            message = str(exc)
            for secret in secrets:
                message = message.replace(secret, "********")
            raise type(exc)(message) from None
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

    def progress(self, project_id: int, round: int | None = None) -> dict[str, int]:
        """``total``, ``finished`` (annotated or skipped), ``annotated``, ``skipped``, ``open`` tasks of
        ``round`` (all rounds when None)."""
        tasks = [t for t in self.tasks(project_id)
                 if round is None or int(t["data"].get("round", -1)) == int(round)]
        return task_progress(tasks)

    def export(self, project_id: int, task_ids: Sequence[int]) -> list[dict[str, Any]]:
        """Full task JSON (annotations included) for ``task_ids`` (see :meth:`export_pages`)."""
        return [t for page in self.export_pages(project_id, task_ids) for t in page.tasks]

    def export_pages(self, project_id: int, task_ids: Sequence[int]) -> Iterator[ExportPage]:
        """Full task JSON (annotations included, tasks without annotations too) for ``task_ids``, one
        :class:`ExportPage` per request of at most ``batch_size`` (and 900) tasks; the next page is
        requested while the caller works on this one.

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
                try:
                    tasks = json.loads(raw)
                except ValueError:
                    raise LabelStudioError(f"export annotations: Label Studio at {self.conn.url} returned "
                                           f"something that is not JSON ({raw[:80]!r})") from None
                wanted = set(map(int, page))
                if not isinstance(tasks, list) or any(t.get("id") not in wanted for t in tasks):
                    raise LabelStudioError(f"export annotations: Label Studio at {self.conn.url} returned tasks "
                                           "that were not asked for (the ids[] filter is not supported here)")
                yield ExportPage(raw, tasks)

    def import_tasks(self, project_id: int, payload: list[dict[str, Any]]) -> list[int]:
        """Create ``payload``'s tasks (``POST /api/projects/{id}/import``, synchronous in Label Studio OSS);
        the new task ids, in payload order (an empty list from a server that does not return them).

        Not retried once sent: a broken request raises :class:`UncertainOutcome` (the caller checks which
        tasks landed, see :func:`flows.ls_push.push`).
        """
        return self._call("import tasks", self._post_import, project_id, payload, idempotent=False)

    def _post_import(self, project_id: int, payload: list[dict[str, Any]]) -> list[int]:
        """The import request itself, with the JSON body encoded here rather than by the SDK.

        Not ``projects.import_tasks``: the SDK's typed request model costs ~2.6 ms of client CPU per task with
        a 65-point pre-annotation, which on two cores slowed a 10,000-task push by ~60 %; what the server
        receives is the same. The SDK has no public way to send a pre-encoded body, so this is the one
        place that reads its private ``_client_wrapper``: for the auth headers, which it derives from the
        token (legacy ``Token`` or a personal access token exchanged for a short-lived ``Bearer``).
        """
        headers = self._ls._client_wrapper.get_headers()
        response = self._http.post(
            f"{self.conn.url}/api/projects/{project_id}/import",
            params={"return_task_ids": "true"},
            content=json.dumps(payload).encode(),
            headers={**headers, "Content-Type": "application/json"},
            timeout=self._timeout_s,
        )
        if response.status_code >= 400:
            try:
                body: Any = response.json()
            except ValueError:
                body = response.text[:500]
            raise ApiError(status_code=response.status_code, headers=dict(response.headers), body=body)
        return [int(i) for i in response.json().get("task_ids") or []]

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
