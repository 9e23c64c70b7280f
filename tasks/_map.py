"""Per-image map steps: a stage plans its items, maps one top-level function over them, assembles the results.

The per-image stages (``teacher``, ``pseudomasks``, ``predict``) split their work into

* a **plan** in the stage's process (read the tables, decide the items, open the output staging folder),
* a **per-image function**: top-level, picklable, pure but for writing that image's own files into the staging
  folder; it returns a small row (counts, centres, probabilities), never the pixels,
* an **assembly** in the stage's process, from the rows (tables, report), in the items' order.

A :class:`Mapper` runs the per-image function over the items and yields one :class:`Outcome` per item: its
position, its key (an image id), and either the value or the exception the function raised (so one bad image
never stops the others; the stage decides what is a per-image failure). :data:`SEQUENTIAL` runs them one after
the other in this process (the default, today's behaviour). A Dask cluster is the other mapper: the ``nucleate``
CLI (``flows.dask_map``) registers it here and :func:`open_mapper` uses it when the environment variable
``NUCLEATE_DASK`` is set (``local``, ``local:N`` or a scheduler address ``tcp://host:port``). Which mapper runs is
execution tuning (speed and machines), never a hyper-parameter: the outputs are the same.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from tasks._stage import StageError

__all__ = [
    "DASK_ENV",
    "SEQUENTIAL",
    "Mapper",
    "Outcome",
    "SequentialMapper",
    "open_mapper",
    "per_image_failure",
    "register_backend",
]

#: environment variable choosing where the per-image work runs (unset or empty: in this process)
DASK_ENV = "NUCLEATE_DASK"


@dataclass(frozen=True)
class Outcome:
    """What the per-image function did for one item: ``value``, or ``error`` (the exception it raised)."""

    index: int  # position of the item in the input
    key: str  # the item's id (an image id)
    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Mapper(Protocol):
    """Runs ``fn(item)`` for every ``(key, item)`` and yields one :class:`Outcome` per item.

    Outcomes may come in any order (``Outcome.index`` says whose); the mapper keeps only a bounded number of
    items in flight, so a pool of 10^6 images never sits in one process's memory. Stopping the iteration (or
    an exception in the consumer) cancels the work still pending.
    """

    name: str

    def map(self, fn: Callable[[Any], Any], items: Iterable[tuple[str, Any]]) -> Iterator[Outcome]: ...


class SequentialMapper:
    """One item after the other in this process, in order (the default)."""

    name = "sequential"

    def map(self, fn: Callable[[Any], Any], items: Iterable[tuple[str, Any]]) -> Iterator[Outcome]:
        for index, (key, item) in enumerate(items):
            try:
                value = fn(item)
            except Exception as exc:  # noqa: BLE001 - handed to the stage, which re-raises what is not per-image
                yield Outcome(index, key, error=exc)
            else:
                yield Outcome(index, key, value)


SEQUENTIAL = SequentialMapper()

#: ``factory(setting) -> context manager yielding a Mapper``, registered by the orchestration layer (flows)
_backend: Callable[[str], AbstractContextManager[Mapper]] | None = None


def register_backend(factory: Callable[[str], AbstractContextManager[Mapper]] | None) -> None:
    """Install the factory :func:`open_mapper` calls with the value of ``NUCLEATE_DASK`` (None removes it)."""
    global _backend
    _backend = factory


@contextlib.contextmanager
def open_mapper(mapper: Mapper | None = None) -> Iterator[Mapper]:
    """``mapper`` if given; else the backend ``NUCLEATE_DASK`` names (connected now, closed on exit); else
    :data:`SEQUENTIAL`. A stage opens it before writing anything, so a cluster that cannot be reached
    fails the stage in one line with nothing written (:class:`StageError`)."""
    if mapper is not None:
        yield mapper
        return
    setting = os.environ.get(DASK_ENV, "").strip()
    if not setting:
        yield SEQUENTIAL
        return
    if _backend is None:
        raise StageError(f"{DASK_ENV}={setting} is set but the Dask backend is not loaded here; run the stage "
                         f"through the `nucleate` command, or unset {DASK_ENV}")
    with _backend(setting) as backend_mapper:
        yield backend_mapper


def per_image_failure(outcome: Outcome, kinds: tuple[type[BaseException], ...]) -> str | None:
    """The reason of a failed ``outcome`` when its error is one of ``kinds`` (a bad image: reported, the others
    go on); None when it succeeded. Any other error is re-raised: it is not about one image."""
    if outcome.error is None:
        return None
    if isinstance(outcome.error, kinds):
        exc = outcome.error
        reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        return str(reason) or type(exc).__name__
    raise outcome.error
