"""flows.rounds without servers: the close rule, the ledger, the project lock, fault injection, bad projects."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime, timedelta

import pytest

from flows.rounds import (
    FAULT_ENV,
    InjectedFault,
    Project,
    RoundBusy,
    RoundError,
    _done,
    close_decision,
    project_lock,
    read_ledger,
)
from nucleate.config import RoundsParams
from nucleate.io import Layout

PUSHED = "2026-11-30T08:00:00Z"
T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def test_all_finished_closes_by_default():
    ok, why = close_decision({"total": 5, "finished": 5}, PUSHED, RoundsParams())
    assert ok and "5/5" in why
    ok, why = close_decision({"total": 5, "finished": 4}, PUSHED, RoundsParams(), now=T0 + timedelta(days=30))
    assert not ok and "4/5" in why  # no deadline by default


def test_minimum_fraction_rule():
    rule = RoundsParams(min_finished_fraction=0.8)
    assert close_decision({"total": 5, "finished": 4}, PUSHED, rule)[0]
    assert not close_decision({"total": 5, "finished": 3}, PUSHED, rule)[0]


def test_deadline_rule_needs_one_finished_task():
    rule = RoundsParams(deadline_hours=24)
    before = close_decision({"total": 5, "finished": 2}, PUSHED, rule, now=T0 + timedelta(hours=23))
    assert not before[0] and "2026-12-01 08:00" in before[1]
    after = close_decision({"total": 5, "finished": 2}, PUSHED, rule, now=T0 + timedelta(hours=24))
    assert after[0] and "deadline" in after[1]
    nothing = close_decision({"total": 5, "finished": 0}, PUSHED, rule, now=T0 + timedelta(hours=48))
    assert not nothing[0] and "no task is finished" in nothing[1]


def test_no_tasks_never_closes():
    assert not close_decision({"total": 0, "finished": 0}, PUSHED, RoundsParams(min_finished_fraction=0.1))[0]


def test_ledger_round_trip_and_bad_file(tmp_path):
    layout = Layout(tmp_path / "storage")
    assert read_ledger(layout) is None
    layout.root.mkdir()
    layout.open_round.write_text(json.dumps({"round": 2, "status": "pushed"}))
    assert read_ledger(layout)["round"] == 2
    layout.open_round.write_text("{not json")
    with pytest.raises(RoundError, match="open_round.json: unreadable round ledger"):
        read_ledger(layout)


def _hold(path, ready, release):
    with project_lock(path, "test holder"):
        ready.set()
        release.wait(20)


def test_project_lock_names_the_holder(tmp_path):
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path, ready, release))
    holder.start()
    try:
        assert ready.wait(20)
        with pytest.raises(RoundBusy, match=r"test holder \(pid \d+"), project_lock(tmp_path, "second"):
            pass
    finally:
        release.set()
        holder.join(20)
    with project_lock(tmp_path, "third"):  # free again once the holder is gone
        pass


def test_fault_injection_only_for_the_named_step(monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "train")
    _done("points")
    with pytest.raises(InjectedFault, match="after step 'train'"):
        _done("train")


def test_not_a_project(tmp_path):
    with pytest.raises(RoundError, match="not a nucleate project .*nucleate init"):
        Project.load(tmp_path)
