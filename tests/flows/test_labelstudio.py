"""The Label Studio adapter against a real Label Studio 1.23.2 server (one per test, see conftest)."""

from __future__ import annotations

import json
import logging
import socket

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flows.labelstudio import (
    Adapter,
    Connection,
    LabelStudioError,
    Secret,
    ServerUnreachable,
    TokenRejected,
    render_images,
    resolve_connection,
)
from nucleate.annotations import keypoint_results
from nucleate.config import LabelStudioParams, params_from_dict

CLASSES = ("nucleus", "micronucleus")
TITLE = "nucleate test"


def _images(manifest: pa.Table, n: int, square: bool | None = False) -> list[str]:
    rows = manifest.to_pylist()
    if square is not None:
        rows = [r for r in rows if (r["width"] == r["height"]) == square]
    return [r["image_id"] for r in rows[:n]]


def _project(adapter: Adapter, model_version: str | None = None) -> int:
    pid = adapter.ensure_project(TITLE, CLASSES, model_version=model_version)
    adapter.ensure_storage(pid, adapter.conn.files_root / "images")
    return pid


def _push(adapter, manifest, ids, round=1, predictions=None, model_version=None):
    pid = _project(adapter, model_version)
    records = render_images(manifest, ids, adapter.conn.files_root)
    return pid, adapter.push(pid, [records[i] for i in ids], round=round, predictions=predictions,
                             model_version=model_version, classes=CLASSES)


@pytest.mark.slow
def test_round_trip_push_annotate_pull_is_exact_on_non_square_images(ls_adapter, sample_manifest):
    manifest, gt = sample_manifest
    ids = _images(manifest, 3)
    sizes = {r["image_id"]: (r["width"], r["height"]) for r in manifest.to_pylist()}
    assert all(w != h for w, h in (sizes[i] for i in ids))
    preds = gt.filter(pc.equal(gt.column("image_id"), ids[0]))
    pid, report = _push(ls_adapter, manifest, ids, predictions=preds, model_version="round-001")
    assert set(report.created) == set(ids) and report.predictions == 1

    # the task and its pre-annotation are stored as pushed
    tid0 = report.created[ids[0]]
    (pred,) = ls_adapter.predictions_of(tid0)
    assert pred["model_version"] == "round-001" and len(pred["result"]) == preds.num_rows
    assert (ls_adapter.conn.files_root / "images" / f"{ids[0]}.png").exists()

    rng = np.random.default_rng(0)
    posted = {}
    for image_id in ids[:2]:
        w, h = sizes[image_id]
        xy = rng.uniform(0, 1, (25, 2)) * [w, h]
        xy[0] = [0.0, 0.0]
        xy[1] = [w, h]                                       # corners are inside
        labels = [CLASSES[i % 2] for i in range(len(xy))]
        ann_id = ls_adapter.annotate(report.created[image_id], keypoint_results(xy, labels, w, h), lead_time=3.5)
        posted[image_id] = (xy, labels, ann_id)

    result = ls_adapter.pull(pid, classes=CLASSES, rounds=[1], expected_image_ids=ids)
    assert result.summary()["annotated_tasks"] == 2 and result.tasks == 3 and result.rejected == []
    me = ls_adapter.whoami()["email"]
    for image_id, (xy, labels, ann_id) in posted.items():
        rows = result.points.filter(pc.equal(result.points.column("image_id"), image_id)).to_pylist()
        got = np.array([(r["x"], r["y"]) for r in rows])
        np.testing.assert_allclose(got, xy, atol=0.01, rtol=0)
        assert [r["label"] for r in rows] == labels
        assert {(r["annotator"], r["task_id"], r["annotation_id"], r["round"], r["origin"]) for r in rows} == {
            (me, report.created[image_id], ann_id, 1, "manual")}


@pytest.mark.slow
def test_push_is_idempotent_and_progress_counts_rounds(ls_adapter, sample_manifest):
    manifest, _ = sample_manifest
    ids = _images(manifest, 5, square=None)
    pid, first = _push(ls_adapter, manifest, ids[:3], round=1)
    assert len(first.created) == 3
    again = _push(ls_adapter, manifest, ids[:3], round=1)[1]
    assert again.created == {} and again.existing == first.created
    assert again.lines()[-1].startswith("push: nothing created")
    # next round: two new images plus one already pushed
    second = _push(ls_adapter, manifest, ids[2:], round=2)[1]
    assert set(second.created) == set(ids[3:]) and set(second.existing) == {ids[2]}
    assert len(ls_adapter.tasks(pid)) == 5
    # an export page holds exactly the tasks asked for
    page = [first.created[ids[1]], second.created[ids[4]]]
    assert sorted(t["id"] for t in ls_adapter.export(pid, page)) == sorted(page)

    t = first.created
    ls_adapter.annotate(t[ids[0]], keypoint_results(np.array([[5.0, 5.0]]), ["nucleus"], 100, 100))
    ls_adapter.annotate(t[ids[1]], [], was_cancelled=True)                      # skipped
    assert ls_adapter.progress(pid, 1) == {"total": 3, "finished": 2, "annotated": 1, "skipped": 1, "open": 1}
    assert ls_adapter.progress(pid, 2) == {"total": 2, "finished": 0, "annotated": 0, "skipped": 0, "open": 2}
    assert ls_adapter.progress(pid)["total"] == 5


@pytest.mark.slow
def test_updates_cancellations_rejections_and_deleted_tasks(ls_adapter, sample_manifest):
    manifest, _ = sample_manifest
    ids = _images(manifest, 4, square=None)
    sizes = {r["image_id"]: (r["width"], r["height"]) for r in manifest.to_pylist()}
    pid, rep = _push(ls_adapter, manifest, ids)
    ls = ls_adapter._ls
    w, h = sizes[ids[0]]
    # annotate, then the annotator edits the same annotation (moves the point)
    ann = ls_adapter.annotate(rep.created[ids[0]], keypoint_results(np.array([[10.0, 10.0]]), ["nucleus"], w, h))
    ls.annotations.update(id=ann, result=keypoint_results(np.array([[20.0, 30.0]]), ["nucleus"], w, h))
    # an annotation with one good point, one outside the image and one unknown label
    w1, h1 = sizes[ids[1]]
    bad = keypoint_results(np.array([[5.0, 6.0], [w1 + 3.0, 2.0], [7.0, 8.0]]), ["micronucleus", "nucleus", "tumor"],
                           w1, h1)
    ls_adapter.annotate(rep.created[ids[1]], bad)
    ls_adapter.annotate(rep.created[ids[2]], [], was_cancelled=True)
    ls.tasks.delete(id=str(rep.created[ids[3]]))

    res = ls_adapter.pull(pid, classes=CLASSES, expected_image_ids=ids)
    rows = res.points.to_pylist()
    assert [(r["image_id"], round(r["x"], 6), round(r["y"], 6), r["label"]) for r in rows] == [
        (ids[0], 20.0, 30.0, "nucleus"), (ids[1], 5.0, 6.0, "micronucleus")]
    assert res.cancelled == 1 and res.skipped_tasks == 1
    assert res.missing_image_ids == [ids[3]]
    assert len(res.rejected) == 2
    assert "outside the image" in res.rejected[0].reason and "unknown label 'tumor'" in res.rejected[1].reason


@pytest.mark.slow
def test_two_simulated_annotators_agreement_and_consensus(ls_adapter, sample_manifest, tmp_path):
    from flows.annotate_sim import annotate_sim
    from flows.ls_cli import pull_to_files
    from nucleate.annotations.agreement import match_points
    from nucleate.io import read_table

    manifest, gt = sample_manifest
    ids = _images(manifest, 3, square=None)
    pid, rep = _push(ls_adapter, manifest, ids)
    ls_adapter.set_overlap(pid, 2)
    p = LabelStudioParams(sim_jitter_px=1.0, sim_miss_rate=0.1, sim_false_click_rate=0.02)
    r1 = annotate_sim(ls_adapter, pid, gt, annotator="alice@lab.org", params=p, seed=1, classes=CLASSES)
    r2 = annotate_sim(ls_adapter, pid, gt, annotator="bob@lab.org", params=p, seed=1, classes=CLASSES)
    assert len(r1.annotated) == len(r2.annotated) == 3
    again = annotate_sim(ls_adapter, pid, gt, annotator="bob@lab.org", params=p, seed=1, classes=CLASSES)
    assert again.annotated == {} and again.already_done == 3

    params = params_from_dict({"classes": list(CLASSES), "labelstudio": {"agreement_radius_px": 4.0}})
    report = pull_to_files(ls_adapter, pid, params, out_dir=tmp_path / "ann", expected=ids, log=lambda s: None)
    assert report["annotated_tasks"] == 3 and report["annotations"] == 6
    (pair,) = report["agreement"]["pairs"]
    assert (pair["annotator_a"], pair["annotator_b"], pair["images"]) == ("alice@lab.org", "bob@lab.org", 3)
    # two annotators who each miss 10% agree on about 0.9 * 0.9 of the nuclei -> F1 ~ 0.88
    assert 0.8 < pair["f1"] < 0.97
    assert pair["mean_distance_px"] == pytest.approx(np.sqrt(np.pi) * 1.0, rel=0.25)  # |N(0, 2 sd^2)| mean
    points = read_table("points", tmp_path / "ann" / "points.parquet")
    consensus = read_table("points", tmp_path / "ann" / "consensus.parquet")
    assert points.num_rows == r1.clicks + r2.clicks
    assert set(consensus.column("annotator").to_pylist()) == {"consensus"}
    # consensus (union of 2 annotators) recovers the true nuclei better than either annotator alone
    for image_id in ids:
        truth = gt.filter(pc.equal(gt.column("image_id"), image_id))
        t_xy = np.stack([truth.column("x").to_numpy(), truth.column("y").to_numpy()], 1)
        c = consensus.filter(pc.equal(consensus.column("image_id"), image_id))
        c_xy = np.stack([c.column("x").to_numpy(), c.column("y").to_numpy()], 1)
        recall = len(match_points(t_xy, c_xy, 4.0)[0]) / len(t_xy)
        assert recall > 0.97
    saved = json.loads((tmp_path / "ann" / "report.json").read_text())
    assert saved["agreement"]["pairs"][0]["f1"] == pair["f1"]


@pytest.mark.slow
def test_server_restart_mid_round_loses_nothing(ls_server, sample_manifest):
    from flows.annotate_sim import annotate_sim

    manifest, gt = sample_manifest
    ids = _images(manifest, 4, square=None)
    adapter = Adapter(resolve_connection(ls_server.data_dir, env={}), retries=2, backoff_s=0.2)
    pid, rep = _push(adapter, manifest, ids)
    p = LabelStudioParams()
    first = annotate_sim(adapter, pid, gt, annotator="carol@lab.org", params=p, limit=2, classes=CLASSES)
    before = adapter.pull(pid, classes=CLASSES)
    old_url = adapter.conn.url

    assert ls_server.down()
    with pytest.raises(ServerUnreachable, match=old_url.replace(".", r"\.")):
        Adapter(adapter.conn, retries=1, backoff_s=0.05).progress(pid)
    ls_server.up()
    adapter = Adapter(resolve_connection(ls_server.data_dir, env={}), retries=2, backoff_s=0.2)
    again = _push(adapter, manifest, ids)[1]
    assert again.created == {}                                                 # tasks survived
    rest = annotate_sim(adapter, pid, gt, annotator="carol@lab.org", params=p, classes=CLASSES)
    assert len(first.annotated) == 2 and len(rest.annotated) == 2 and rest.already_done == 2
    after = adapter.pull(pid, classes=CLASSES)
    assert after.annotated_tasks == 4 and adapter.progress(pid)["open"] == 0
    key = ["image_id", "annotation_id", "x", "y"]
    old_rows = before.points.select(key).to_pylist()
    new_rows = after.points.select(key).to_pylist()
    assert all(r in new_rows for r in old_rows)                                # nothing lost
    assert after.points.num_rows == first.clicks + rest.clicks


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_retried_with_backoff_then_one_clear_error():
    url = f"http://127.0.0.1:{_closed_port()}"
    waits: list[float] = []
    adapter = Adapter(Connection(url, Secret("not-a-real-token-123")), retries=3, backoff_s=0.5, sleep=waits.append)
    with pytest.raises(ServerUnreachable) as err:
        adapter.progress(1)
    assert waits == [0.5, 1.0, 2.0]
    msg = str(err.value)
    assert url in msg and "tried 4 times" in msg and "nucleate ls up" in msg
    assert "not-a-real-token-123" not in msg and "not-a-real-token-123" not in repr(adapter)


def test_missing_local_server_and_missing_token_say_what_to_do(tmp_path):
    with pytest.raises(ServerUnreachable, match="nucleate ls up"):
        resolve_connection(tmp_path / "none", env={})
    with pytest.raises(TokenRejected, match="NUCLEATE_LS_TOKEN is not set"):
        resolve_connection(tmp_path, env={"NUCLEATE_LS_URL": "http://127.0.0.1:1"})
    conn = resolve_connection(tmp_path, env={"NUCLEATE_LS_URL": "http://h:1/", "NUCLEATE_LS_TOKEN": "abcsecret",
                                             "NUCLEATE_LS_FILES_ROOT": str(tmp_path)})
    assert conn.url == "http://h:1" and conn.files_root == tmp_path
    assert "abcsecret" not in repr(conn) and "abcsecret" not in str(conn.token)


@pytest.mark.slow
def test_rejected_token_and_the_token_never_shows(ls_server, sample_manifest, caplog, capfd):
    conn = resolve_connection(ls_server.data_dir, env={})
    token = conn.token.reveal()
    caplog.set_level(logging.DEBUG)
    bad = Adapter(Connection(conn.url, Secret("wrong-token-0123456789"), conn.files_root), retries=0)
    with pytest.raises(TokenRejected) as err:
        bad.whoami()
    msg = str(err.value)
    assert "rejected the token (HTTP 401" in msg and conn.url in msg and "NUCLEATE_LS_TOKEN" in msg
    assert "wrong-token-0123456789" not in msg

    # a whole push / pull at DEBUG logging: the real token appears in no log line, error or repr
    good = Adapter(conn, retries=0)
    manifest, _ = sample_manifest
    ids = _images(manifest, 1)
    pid, _ = _push(good, manifest, ids)
    good.pull(pid, classes=CLASSES)
    with pytest.raises(LabelStudioError) as err2:
        good.annotate(10**9, [])                                 # no such task: an HTTP error from the server
    out, errout = capfd.readouterr()
    server_log = ls_server.log_path.read_text(errors="replace")
    for text in (caplog.text, out, errout, str(err2.value), repr(good), repr(conn), str(conn), server_log):
        assert token not in text
    assert not (ls_server.data_dir / "credentials.json").stat().st_mode & 0o077


@pytest.mark.slow
def test_pull_writes_all_files_or_none(ls_adapter, sample_manifest, tmp_path, monkeypatch):
    from flows.ls_cli import pull_to_files

    manifest, _ = sample_manifest
    ids = _images(manifest, 2, square=None)
    pid, rep = _push(ls_adapter, manifest, ids)
    ls_adapter.annotate(rep.created[ids[0]], keypoint_results(np.array([[5.0, 5.0]]), ["nucleus"], 100, 100))
    params = params_from_dict({"classes": list(CLASSES)})
    out = tmp_path / "ann"
    first = pull_to_files(ls_adapter, pid, params, out_dir=out, log=lambda s: None)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {"points.parquet", "consensus.parquet", "report.json"} and first["points"] == 1

    ls_adapter.annotate(rep.created[ids[1]], keypoint_results(np.array([[6.0, 5.0]]), ["nucleus"], 100, 100))

    real_pages = ls_adapter.export_pages

    def broken_export(*args, **kwargs):                          # fault: the server goes away mid-pull
        yield from real_pages(*args, **kwargs)
        raise ServerUnreachable("Label Studio at http://x is not reachable")

    monkeypatch.setattr(ls_adapter, "export_pages", broken_export)
    with pytest.raises(ServerUnreachable):
        pull_to_files(ls_adapter, pid, params, out_dir=out, log=lambda s: None)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before           # untouched, no temp files left


def test_push_needs_images_listed_in_the_manifest(sample_manifest, tmp_path):
    manifest, _ = sample_manifest
    with pytest.raises(KeyError, match="not in the manifest"):
        render_images(manifest, ["no-such-image"], tmp_path)


def test_rendered_images_keep_their_pixel_size(sample_manifest, tmp_path):
    from PIL import Image

    manifest, _ = sample_manifest
    rows = manifest.to_pylist()[:2]
    recs = render_images(manifest, [r["image_id"] for r in rows], tmp_path)
    for r in rows:
        with Image.open(tmp_path / recs[r["image_id"]].rel) as im:
            assert im.size == (r["width"], r["height"]) and im.mode in ("L", "RGB")


def test_predictions_outside_the_image_are_left_out_with_a_report(sample_manifest):
    from flows.labelstudio import ImageRecord, PushReport, _group_predictions

    rec = ImageRecord("img", "images/img.png", 100, 50, "x.tif")
    table = pa.table({"image_id": ["img", "img", "img", "other"], "x": [1.0, 101.0, 3.0, 1.0],
                      "y": [1.0, 1.0, 3.0, 1.0], "label": ["nucleus", "nucleus", "blob", "nucleus"],
                      "score": [0.9, 0.8, 0.7, 0.6]})
    report = PushReport(project_id=1, round=1)
    grouped = _group_predictions(table, {"img": rec}, CLASSES, report)
    assert grouped["img"]["xy"].tolist() == [[1.0, 1.0]] and grouped["img"]["score"] == [0.9]
    assert len(report.rejected_predictions) == 2
    assert "row 1" in report.rejected_predictions[0] and "outside the image" in report.rejected_predictions[0]
    assert "unknown label 'blob'" in report.rejected_predictions[1]


@pytest.mark.slow
def test_a_push_whose_response_is_lost_creates_nothing_twice(ls_adapter, sample_manifest):
    import httpx

    manifest, _ = sample_manifest
    ids = _images(manifest, 4, square=None)
    pid = _project(ls_adapter)
    records = render_images(manifest, ids, ls_adapter.conn.files_root)
    real_import = ls_adapter._import
    calls = []

    def import_then_lose_the_response(project_id, payload):       # fault: the batch lands, the answer is lost
        calls.append(len(payload))
        task_ids = real_import(project_id, payload)
        if len(calls) == 1:
            raise httpx.ReadTimeout("simulated: response lost")
        return task_ids

    ls_adapter._import = import_then_lose_the_response
    ls_adapter.batch_size = 2
    report = ls_adapter.push(pid, [records[i] for i in ids], round=1)
    assert calls == [2, 2]                                         # first batch not re-sent, second sent once
    tasks = ls_adapter.tasks(pid)
    assert sorted(str(t["data"]["image_id"]) for t in tasks) == sorted(ids)  # no duplicates
    assert report.created == {str(t["data"]["image_id"]): t["id"] for t in tasks}
