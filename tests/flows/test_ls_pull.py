"""flows.ls_pull against a real Label Studio 1.23.2 server (one per test, see conftest): raw exports saved
unchanged, in-flight rows cleared, and the ``points`` stage on the saved exports."""

from __future__ import annotations

import json
import stat

import numpy as np
import pyarrow.compute as pc
import pytest

from flows.ls_connection import ServerUnreachable
from flows.ls_pull import pull
from flows.ls_push import load_inflight
from nucleate.annotations import collect_points, keypoint_results
from nucleate.config import LabelStudioParams
from nucleate.io import read_table, write_table
from tasks import points as points_stage


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _stage(rounds, tmp_path, annotations, **ls):
    """Run the points stage on ``annotations``; (points, consensus, report dict)."""
    manifest = tmp_path / "manifest.parquet"
    if not manifest.exists():
        write_table("manifest", rounds.manifest, manifest)
    out = tmp_path / "stage"
    points_stage.run(LabelStudioParams(**ls), rounds.labels, annotations=annotations, manifest=manifest,
                     out=out / "points.parquet", consensus=out / "consensus.parquet", report=out / "report.json")
    return (read_table("points", out / "points.parquet"), read_table("points", out / "consensus.parquet"),
            json.loads((out / "report.json").read_text()))


def _old_pull_points(adapter, pid, labels):
    """What the pull before issue 9 converted: the server's export of every task -> collect_points."""
    tasks = adapter.export(pid, [t["id"] for t in adapter.tasks(pid)])
    return collect_points(tasks, labels=labels, users=adapter.users()).points


@pytest.mark.slow
def test_pull_saves_the_raw_export_and_the_points_stage_reproduces_the_points(ls_server, ls_adapter, rounds, tmp_path):
    ids = rounds.pick(3)
    assert all(w != h for w, h in (rounds.sizes[i] for i in ids))       # non-square: x/y mix-ups show
    inflight = tmp_path / "inflight.parquet"
    pid, report = rounds.push(ls_adapter, ids, inflight=inflight)
    rng = np.random.default_rng(0)
    posted = {}
    for image_id in ids[:2]:
        w, h = rounds.sizes[image_id]
        xy = rng.uniform(0, 1, (25, 2)) * [w, h]
        xy[0] = [0.0, 0.0]
        xy[1] = [w, h]                                                  # corners are inside
        labels = [rounds.labels[i % 2] for i in range(len(xy))]
        ann_id = ls_adapter.annotate(report.created[image_id], keypoint_results(xy, labels, w, h), lead_time=3.5)
        posted[image_id] = (xy, labels, ann_id)

    ann = tmp_path / "annotations"
    got = pull(ls_adapter, pid, annotations=ann, inflight=inflight)
    folder = ann / "round-001"
    assert [(r.round, r.path, r.tasks, r.finished, r.changed) for r in got.rounds] == [(1, folder, 3, 2, True)]
    assert sorted(p.name for p in ann.iterdir()) == ["round-001"]      # no staging folder left
    # export.json: the server's bytes for every task of the round (the open one too), unchanged
    task_ids = sorted(report.created.values())
    direct = b"".join(ls_adapter._ls.projects.exports.download_sync(
        pid, export_type="JSON", download_all_tasks=True,
        request_options={"additional_query_parameters": {"ids[]": [str(i) for i in task_ids]}}))
    assert (folder / "export.json").read_bytes() == direct
    assert sorted(t["id"] for t in json.loads(direct)) == task_ids
    assert (folder / "label_config.xml").read_text() == ls_adapter.label_config(pid)
    server = json.loads((folder / "server.json").read_text())
    assert server["label_studio"] == "1.23.2" and server["project_id"] == pid and server["round"] == 1
    assert server["url"] == ls_adapter.conn.url and ls_adapter.conn.token.reveal() not in json.dumps(server)
    assert server["pulled_at"].endswith("Z") and server["deleted_tasks"] == []
    # finished tasks left the in-flight table, the open one stays
    assert load_inflight(inflight).to_pylist() == [{"image_id": ids[2], "round": 1, "task_id": report.created[ids[2]]}]
    assert (got.inflight_cleared, got.inflight_left) == (2, 1)
    # private: the data dir, its database and credentials, and the saved round are owner-only
    data = ls_server.data_dir
    assert _mode(data) == 0o700 and _mode(data / "server") == 0o700 and _mode(data / "files") == 0o700
    assert _mode(data / "server" / "label_studio.sqlite3") == 0o600 and _mode(data / "credentials.json") == 0o600
    assert _mode(data / "server.log") == 0o600 and _mode(data / "server.json") == 0o600
    assert _mode(ann) == 0o700 and _mode(folder) == 0o700
    assert {p.name: _mode(p) for p in folder.iterdir()} == dict.fromkeys(
        ["export.json", "label_config.xml", "server.json"], 0o600)

    # pulling again changes nothing (same bytes, same folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert [r.changed for r in pull(ls_adapter, pid, annotations=ann, inflight=inflight).rounds] == [False]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    # the points stage on the saved export = what the old pull converted from the live server, exactly
    points, consensus, rep = _stage(rounds, tmp_path, ann)
    old = _old_pull_points(ls_adapter, pid, rounds.labels)
    assert points.to_pylist() == old.to_pylist() and points.num_rows == 50
    order = [("image_id", "ascending"), ("x", "ascending")]
    assert consensus.sort_by(order).to_pylist() == points.sort_by(order).to_pylist()  # one annotator: its points
    me = ls_adapter.whoami()["email"]
    for image_id, (xy, labels, ann_id) in posted.items():
        rows = points.filter(pc.equal(points.column("image_id"), image_id)).to_pylist()
        np.testing.assert_allclose([(r["x"], r["y"]) for r in rows], xy, atol=1e-9, rtol=0)
        assert [r["label"] for r in rows] == labels
        assert {(r["annotator"], r["task_id"], r["annotation_id"], r["round"], r["origin"]) for r in rows} == {
            (me, report.created[image_id], ann_id, 1, "manual")}
    r1 = rep["rounds"]["1"]
    assert (r1["tasks"], r1["finished"], r1["open"], r1["points"], r1["rejected_points"]) == (3, 2, 1, 50, 0)


@pytest.mark.slow
def test_updates_skips_rejections_and_deleted_tasks_reach_the_report(ls_adapter, rounds, tmp_path):
    ids = rounds.pick(4, square=None)
    inflight = tmp_path / "inflight.parquet"
    pid, rep = rounds.push(ls_adapter, ids, inflight=inflight)
    ls = ls_adapter._ls
    w, h = rounds.sizes[ids[0]]
    # annotate, then the annotator edits the same annotation (moves the point)
    ann = ls_adapter.annotate(rep.created[ids[0]], keypoint_results(np.array([[10.0, 10.0]]), ["nucleus"], w, h))
    ls.annotations.update(id=ann, result=keypoint_results(np.array([[20.0, 30.0]]), ["nucleus"], w, h))
    # an annotation with one good point, one outside the image and one unknown label
    w1, h1 = rounds.sizes[ids[1]]
    bad = keypoint_results(np.array([[5.0, 6.0], [w1 + 3.0, 2.0], [7.0, 8.0]]), ["micronucleus", "nucleus", "tumor"],
                           w1, h1)
    ls_adapter.annotate(rep.created[ids[1]], bad)
    ls_adapter.annotate(rep.created[ids[2]], [], was_cancelled=True)
    ls.tasks.delete(id=str(rep.created[ids[3]]))

    ann_dir = tmp_path / "annotations"
    got = pull(ls_adapter, pid, annotations=ann_dir, inflight=inflight)
    assert [(r.tasks, r.finished, r.skipped, r.deleted) for r in got.rounds] == [(3, 3, 1, 1)]
    assert load_inflight(inflight).num_rows == 0                        # finished, skipped and deleted: cleared
    server = json.loads((ann_dir / "round-001" / "server.json").read_text())
    assert server["deleted_tasks"] == [{"image_id": ids[3], "task_id": rep.created[ids[3]]}]
    # a later pull keeps the deleted task on record although its in-flight row is gone
    assert [r.changed for r in pull(ls_adapter, pid, annotations=ann_dir, inflight=inflight).rounds] == [False]

    points, _, report = _stage(rounds, tmp_path, ann_dir)
    assert [(r["image_id"], round(r["x"], 6), round(r["y"], 6), r["label"]) for r in points.to_pylist()] == [
        (ids[0], 20.0, 30.0, "nucleus"), (ids[1], 5.0, 6.0, "micronucleus")]
    r1 = report["rounds"]["1"]
    assert (r1["skipped_tasks"], r1["deleted_tasks"], r1["deleted"], r1["rejected_points"]) == (1, 1, [ids[3]], 2)
    assert "outside the image" in r1["rejected"][0] and "unknown label 'tumor'" in r1["rejected"][1]
    assert (report["tasks"], report["skipped_tasks"], report["deleted_tasks"], report["points"]) == (3, 1, 1, 2)


@pytest.mark.slow
def test_a_pull_that_breaks_keeps_the_previous_round_folder(ls_adapter, rounds, tmp_path, monkeypatch):
    ids = rounds.pick(2, square=None)
    pid, rep = rounds.push(ls_adapter, ids)
    ls_adapter.annotate(rep.created[ids[0]], keypoint_results(np.array([[5.0, 5.0]]), ["nucleus"], 100, 100))
    ann = tmp_path / "annotations"
    pull(ls_adapter, pid, annotations=ann)
    before = {p.name: p.read_bytes() for p in (ann / "round-001").iterdir()}

    ls_adapter.annotate(rep.created[ids[1]], keypoint_results(np.array([[6.0, 5.0]]), ["nucleus"], 100, 100))
    real_pages = ls_adapter.export_pages

    def broken_export(*args, **kwargs):                          # fault: the server goes away mid-pull
        yield from real_pages(*args, **kwargs)
        raise ServerUnreachable("Label Studio at http://x is not reachable")

    monkeypatch.setattr(ls_adapter, "export_pages", broken_export)
    with pytest.raises(ServerUnreachable):
        pull(ls_adapter, pid, annotations=ann)
    assert sorted(p.name for p in ann.iterdir()) == ["round-001"]      # no staging folder left
    assert {p.name: p.read_bytes() for p in (ann / "round-001").iterdir()} == before  # untouched
    monkeypatch.undo()
    assert [r.changed for r in pull(ls_adapter, pid, annotations=ann).rounds] == [True]
    assert len(json.loads((ann / "round-001" / "export.json").read_bytes())[1]["annotations"]) == 1


@pytest.mark.slow
def test_two_simulated_annotators_agreement_and_consensus(ls_adapter, rounds, tmp_path):
    from flows.annotate_sim import annotate_sim
    from nucleate.annotations.agreement import match_points

    gt = rounds.gt
    ids = rounds.pick(3, square=None)
    pid, _ = rounds.push(ls_adapter, ids)
    ls_adapter.set_overlap(pid, 2)
    p = LabelStudioParams(sim_jitter_px=1.0, sim_miss_rate=0.1, sim_false_click_rate=0.02)
    r1 = annotate_sim(ls_adapter, pid, gt, annotator="alice@lab.org", params=p, seed=1, labels=rounds.labels)
    r2 = annotate_sim(ls_adapter, pid, gt, annotator="bob@lab.org", params=p, seed=1, labels=rounds.labels)
    assert len(r1.annotated) == len(r2.annotated) == 3
    again = annotate_sim(ls_adapter, pid, gt, annotator="bob@lab.org", params=p, seed=1, labels=rounds.labels)
    assert again.annotated == {} and again.already_done == 3

    pull(ls_adapter, pid, annotations=tmp_path / "annotations")
    points, consensus, report = _stage(rounds, tmp_path, tmp_path / "annotations", agreement_radius_px=4.0)
    assert report["rounds"]["1"]["finished"] == 3 and report["annotations"] == 6
    (pair,) = report["agreement"]["pairs"]
    assert (pair["annotator_a"], pair["annotator_b"], pair["images"]) == ("alice@lab.org", "bob@lab.org", 3)
    # two annotators who each miss 10% agree on about 0.9 * 0.9 of the nuclei -> F1 ~ 0.88
    assert 0.8 < pair["f1"] < 0.97
    assert pair["mean_distance_px"] == pytest.approx(np.sqrt(np.pi) * 1.0, rel=0.25)  # |N(0, 2 sd^2)| mean
    assert report["rounds"]["1"]["agreement"]["pairs"] == report["agreement"]["pairs"]
    assert points.num_rows == r1.clicks + r2.clicks
    assert set(consensus.column("annotator").to_pylist()) == {"consensus"}
    # consensus (union of 2 annotators) recovers the true nuclei better than either annotator alone
    for image_id in ids:
        truth = gt.filter(pc.equal(gt.column("image_id"), image_id))
        t_xy = np.stack([truth.column("x").to_numpy(), truth.column("y").to_numpy()], 1)
        c = consensus.filter(pc.equal(consensus.column("image_id"), image_id))
        c_xy = np.stack([c.column("x").to_numpy(), c.column("y").to_numpy()], 1)
        assert len(match_points(t_xy, c_xy, 4.0)[0]) / len(t_xy) > 0.97


@pytest.mark.slow
def test_server_restart_mid_round_loses_nothing(ls_server, rounds, tmp_path):
    from flows.annotate_sim import annotate_sim
    from flows.ls_client import Adapter
    from flows.ls_connection import resolve_connection

    gt, labels = rounds.gt, rounds.labels
    ids = rounds.pick(4, square=None)
    adapter = Adapter(resolve_connection(ls_server.data_dir, env={}), retries=2, backoff_s=0.2)
    pid, _ = rounds.push(adapter, ids)
    p = LabelStudioParams()
    first = annotate_sim(adapter, pid, gt, annotator="carol@lab.org", params=p, limit=2, labels=labels)
    before = _old_pull_points(adapter, pid, labels)
    old_url = adapter.conn.url

    assert ls_server.down()
    with pytest.raises(ServerUnreachable, match=old_url.replace(".", r"\.")):
        Adapter(adapter.conn, retries=1, backoff_s=0.05).progress(pid)
    ls_server.up()
    adapter = Adapter(resolve_connection(ls_server.data_dir, env={}), retries=2, backoff_s=0.2)
    again = rounds.push(adapter, ids)[1]
    assert again.created == {}                                                 # tasks survived
    rest = annotate_sim(adapter, pid, gt, annotator="carol@lab.org", params=p, labels=labels)
    assert len(first.annotated) == 2 and len(rest.annotated) == 2 and rest.already_done == 2
    after = _old_pull_points(adapter, pid, labels)
    assert adapter.progress(pid)["open"] == 0
    key = ["image_id", "annotation_id", "x", "y"]
    new_rows = after.select(key).to_pylist()
    assert all(r in new_rows for r in before.select(key).to_pylist())        # nothing lost
    assert after.num_rows == first.clicks + rest.clicks
