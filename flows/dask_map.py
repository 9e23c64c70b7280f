"""Per-image work on a Dask cluster: the :class:`tasks._map.Mapper` backed by ``dask.distributed``.

Chosen by the environment variable ``NUCLEATE_DASK`` (execution tuning, not a hyper-parameter, so not in
params.yaml; unset or empty: the stages work in their own process, as before):

* ``local`` / ``local:N``: a cluster of N worker processes (default: one per CPU core) on 127.0.0.1, one
  thread each, no dashboard, started for the stage and closed after it;
* ``tcp://host:port`` (any ``scheme://host:port``): an existing scheduler (``dask scheduler``) with its
  workers (``dask worker tcp://host:port``), e.g. on several machines. The workers must import the same
  nucleate and see the image, model and storage folders at the same paths (a shared file system): they read
  the images and write each image's outputs into the stage's staging folder; only small rows come back.

:func:`register` (called by the ``nucleate`` CLI, which ``dvc repro`` and the round flows run) makes
:func:`tasks._map.open_mapper` use it. A scheduler that cannot be reached (or has no workers) fails the stage
in one line within :data:`CONNECT_TIMEOUT_S` seconds, before anything is written.

:func:`task_runner` builds the ``prefect_dask.DaskTaskRunner`` of the same setting, for a Prefect flow that
maps per-image tasks itself.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from tasks import _map
from tasks._map import DASK_ENV, Outcome
from tasks._stage import StageError

__all__ = [
    "CONNECT_TIMEOUT_S",
    "DaskMapper",
    "DaskSetting",
    "DaskUnavailable",
    "local_cluster_kwargs",
    "open_dask",
    "parse_setting",
    "register",
    "task_runner",
]

#: seconds to reach a scheduler, and for it to have a worker, before the stage gives up
CONNECT_TIMEOUT_S = 3.0


class DaskUnavailable(StageError):
    """``NUCLEATE_DASK`` is malformed, or its scheduler cannot be reached or has no workers."""


@dataclass(frozen=True)
class DaskSetting:
    """A parsed ``NUCLEATE_DASK``: a local cluster of ``workers`` processes, or a scheduler ``address``."""

    address: str | None = None
    workers: int | None = None  # local cluster: None = one per CPU core

    @property
    def local(self) -> bool:
        return self.address is None


def parse_setting(value: str) -> DaskSetting:
    """``local``, ``local:N`` (N >= 1 worker processes) or ``scheme://host:port``; :class:`DaskUnavailable`
    otherwise."""
    text = value.strip()
    if text == "local":
        return DaskSetting()
    if text.startswith("local:"):
        n = text.removeprefix("local:")
        if n.isdigit() and int(n) >= 1:
            return DaskSetting(workers=int(n))
    elif "://" in text and text.rsplit(":", 1)[-1].isdigit():
        return DaskSetting(address=text)
    raise DaskUnavailable(f"{DASK_ENV}={value!r}: expected `local`, `local:N` (N worker processes) or a scheduler "
                          "address such as tcp://host:8786; unset it to work in this process")


def local_cluster_kwargs(workers: int | None = None) -> dict[str, Any]:
    """``distributed.LocalCluster`` keywords: ``workers`` processes (None: one per core), one thread each,
    on 127.0.0.1, no dashboard, errors only (a slow worker shutdown is not the user's business)."""
    return {"n_workers": workers or os.cpu_count() or 1, "threads_per_worker": 1, "processes": True,
            "host": "127.0.0.1", "dashboard_address": None, "silence_logs": logging.ERROR}


def _unreachable(address: str, why: object) -> DaskUnavailable:
    reason = (str(why).strip().splitlines() or [type(why).__name__])[0]
    return DaskUnavailable(f"Dask scheduler {address} unreachable ({DASK_ENV}): {reason}; start one with "
                           f"`dask scheduler` (and workers: `dask worker {address}`) or unset {DASK_ENV}")


def _call(fn: Callable[[Any], Any], item: Any) -> tuple[bool, Any]:
    """``(True, fn(item))``, or ``(False, the exception)`` (on the worker: a bad image is the stage's to report,
    not a task failure for the worker to log). An exception that cannot travel back becomes a RuntimeError."""
    try:
        return True, fn(item)
    except Exception as exc:  # noqa: BLE001 - the stage re-raises what is not about one image
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001
            return False, RuntimeError(f"{type(exc).__name__}: {exc}")
        return False, exc


class DaskMapper:
    """Runs each item's function as one Dask task on ``client``'s cluster, at most ``window`` in flight
    (default: 4 per worker thread, topped up in batches once half is done), and yields the outcomes as they
    complete (:class:`tasks._map.Mapper`).

    Each finished task's result is released on the cluster once yielded, so neither the cluster nor this
    process holds more than ``window`` results. An exception in a task comes back as that item's
    ``Outcome.error`` (the original exception type); the iteration going away cancels what is pending.
    """

    def __init__(self, client, *, window: int | None = None, name: str | None = None):
        self.client = client
        self.window = window
        self.name = name or f"Dask {client.scheduler.address}"

    def map(self, fn: Callable[[Any], Any], items: Iterable[tuple[str, Any]]) -> Iterator[Outcome]:
        from distributed import as_completed

        threads = sum(self.client.nthreads().values())
        window = max(2, self.window or 4 * max(1, threads))
        source = iter(enumerate(items))
        tag = f"nucleate-{getattr(fn, '__name__', None) or getattr(getattr(fn, 'func', None), '__name__', 'map')}"
        run = uuid.uuid4().hex[:8]
        pending: dict[str, tuple[Any, int, str]] = {}
        done = as_completed(loop=self.client.loop)

        def refill() -> None:
            """Top the work in flight up to ``window`` in one batch (one round trip), once half of it is done."""
            if len(pending) > window // 2:
                return
            batch = [nxt for nxt in itertools.islice(source, window - len(pending))]
            if not batch:
                return
            futures = self.client.map(_call, [fn] * len(batch), [item for _, (_, item) in batch],
                                      key=[f"{tag}-{run}-{index}" for index, _ in batch], pure=False, retries=0)
            for future, (index, (key, _)) in zip(futures, batch, strict=True):
                pending[future.key] = (future, index, key)
            done.update(futures)

        try:
            refill()
            for future in done:
                _, index, key = pending.pop(future.key)
                if future.status == "finished":
                    ok, value = future.result()
                    outcome = Outcome(index, key, value) if ok else Outcome(index, key, error=value)
                else:  # the task itself failed (a worker died, ...)
                    try:
                        error = future.exception()
                    except BaseException as exc:  # noqa: BLE001 - cancelled: no exception to fetch
                        error = exc
                    why = f"{type(error).__name__}: {error}" if error else future.status
                    outcome = Outcome(index, key, error=DaskUnavailable(
                        f"the Dask task of {key} failed on the cluster ({why}); check the workers' logs"))
                future.release()
                refill()
                yield outcome
        finally:
            if pending:
                self.client.cancel([future for future, _, _ in pending.values()])


@contextlib.contextmanager
def open_dask(value: str) -> Iterator[DaskMapper]:
    """The mapper of ``NUCLEATE_DASK`` = ``value``: a local cluster started now (closed on exit) or a client
    of the scheduler at the address (closed on exit); :class:`DaskUnavailable` in one line otherwise."""
    from distributed import Client, LocalCluster

    setting = parse_setting(value)
    if setting.local:
        kwargs = local_cluster_kwargs(setting.workers)
        with LocalCluster(**kwargs) as cluster, Client(cluster, set_as_default=False) as client:
            yield DaskMapper(client, name=f"a local Dask cluster of {kwargs['n_workers']} worker process(es)")
        return
    address = setting.address
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise _unreachable(address, exc) from None
    with client:
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise DaskUnavailable(f"Dask scheduler {address} ({DASK_ENV}) has no workers ({exc}); start one with "
                                  f"`dask worker {address}` or unset {DASK_ENV}") from None
        workers = len(client.nthreads())
        yield DaskMapper(client, name=f"the Dask scheduler {address} ({workers} worker(s))")


def register() -> None:
    """Make the stages (:func:`tasks._map.open_mapper`) use :func:`open_dask` when ``NUCLEATE_DASK`` is set."""
    _map.register_backend(open_dask)


def task_runner(value: str | None = None):
    """A ``prefect_dask.DaskTaskRunner`` for ``value`` (default: ``NUCLEATE_DASK``): the scheduler at the
    address, or a local cluster with :func:`local_cluster_kwargs`; None when unset (Prefect's default runner)."""
    value = os.environ.get(DASK_ENV, "") if value is None else value
    if not value.strip():
        return None
    from prefect_dask import DaskTaskRunner

    setting = parse_setting(value)
    if setting.local:
        return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                              cluster_kwargs=local_cluster_kwargs(setting.workers))
    return DaskTaskRunner(address=setting.address)
