"""Annotation rounds as Prefect flows: ``open-round``, ``close-round`` and ``watch`` (skeleton; being written).

* ``open_round(project=".", wait=True)``: ingest -> teacher -> select -> pre-annotations -> push, then (run from a
  deployment) suspend until the watcher resumes it, then close the round.
* ``close_round(project=".", round=None)``: pull -> track the export -> points -> pseudomasks -> train -> predict ->
  evaluate -> report -> git commit + tag ``round-NNN`` -> ``dvc push``.
* ``watch(project=".")``: reads Label Studio's progress of the open round and resumes / closes it.
"""

from __future__ import annotations

from prefect import flow

__all__ = ["close_round", "open_round", "watch"]


@flow(name="open-round", log_prints=False)
def open_round(project: str = ".", wait: bool = True) -> dict:
    """Open the next round of ``project`` (a nucleate project folder)."""
    raise NotImplementedError


@flow(name="close-round", log_prints=False)
def close_round(project: str = ".", round: int | None = None) -> dict:  # noqa: A002
    """Close ``round`` (default: the open one) of ``project``."""
    raise NotImplementedError


@flow(name="watch", log_prints=False)
def watch(project: str = ".") -> dict:
    """Resume / close the open round of ``project`` when Label Studio says it is done (params ``rounds``)."""
    return {"round": None, "action": "none", "reason": "no round is open"}
