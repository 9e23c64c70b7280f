"""flows.ls_push against a real Label Studio 1.23.2 server (one per test, see conftest): tasks, pre-annotations,
the in-flight table."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest

from flows.ls_push import load_inflight, render_images, update_inflight
from nucleate.annotations import keypoint_results
from nucleate.io import SCHEMAS, TableError


def _inflight_rows(path):
    return sorted((r["image_id"], r["round"], r["task_id"]) for r in load_inflight(path).to_pylist())


@pytest.mark.slow
def test_push_is_idempotent_records_inflight_rows_and_progress_counts_rounds(ls_adapter, rounds, tmp_path):
    ids = rounds.pick(5, square=None)
    inflight = tmp_path / "inflight.parquet"
    gt = rounds.gt
    preds = gt.filter(pc.equal(gt.column("image_id"), ids[0]))
    pid, first = rounds.push(ls_adapter, ids[:3], round=1, predictions=preds, model_version="round-001",
                             inflight=inflight)
    assert len(first.created) == 3 and first.predictions == 1 and first.inflight_added == 3
    (pred,) = ls_adapter.predictions_of(first.created[ids[0]])          # the pre-annotation is stored as pushed
    assert pred["model_version"] == "round-001" and len(pred["result"]) == preds.num_rows
    assert (ls_adapter.conn.files_root / "images" / f"{ids[0]}.png").exists()
    # every pushed image is in flight with its round and task id
    assert _inflight_rows(inflight) == sorted((i, 1, first.created[i]) for i in ids[:3])
    assert load_inflight(inflight).schema == SCHEMAS["inflight"]

    before = inflight.read_bytes()
    again = rounds.push(ls_adapter, ids[:3], round=1, inflight=inflight)[1]
    assert again.created == {} and again.existing == first.created and again.inflight_added == 0
    assert again.lines()[0].startswith("push: nothing created")
    assert inflight.read_bytes() == before                              # nothing duplicated, file untouched
    # an in-flight file that lost a row (e.g. restored from an older copy) gets it back from the existing task
    update_inflight(inflight, remove=[ids[1]])
    rounds.push(ls_adapter, ids[:3], round=1, inflight=inflight)
    assert _inflight_rows(inflight) == sorted((i, 1, first.created[i]) for i in ids[:3])

    # next round: two new images plus one already pushed (it keeps its task and round)
    second = rounds.push(ls_adapter, ids[2:], round=2, inflight=inflight)[1]
    assert set(second.created) == set(ids[3:]) and set(second.existing) == {ids[2]}
    assert len(ls_adapter.tasks(pid)) == 5
    tasks = {**first.created, **second.created}
    assert _inflight_rows(inflight) == sorted([(i, 1, tasks[i]) for i in ids[:3]] + [(i, 2, tasks[i]) for i in ids[3:]])
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
def test_a_push_whose_response_is_lost_creates_nothing_twice(ls_adapter, rounds, tmp_path):
    import httpx

    ids = rounds.pick(4, square=None)
    real_post = ls_adapter._post_import
    calls = []

    def import_then_lose_the_response(project_id, payload):       # fault: the batch lands, the answer is lost
        calls.append(len(payload))
        task_ids = real_post(project_id, payload)
        if len(calls) == 1:
            raise httpx.ReadTimeout("simulated: response lost")
        return task_ids

    ls_adapter._post_import = import_then_lose_the_response
    ls_adapter.batch_size = 2
    inflight = tmp_path / "inflight.parquet"
    pid, report = rounds.push(ls_adapter, ids, inflight=inflight)
    assert calls == [2, 2]                                         # first batch not re-sent, second sent once
    tasks = ls_adapter.tasks(pid)
    assert sorted(str(t["data"]["image_id"]) for t in tasks) == sorted(ids)  # no duplicates
    assert report.created == {str(t["data"]["image_id"]): t["id"] for t in tasks}
    assert _inflight_rows(inflight) == sorted((i, 1, report.created[i]) for i in ids)


def test_inflight_updates_are_atomic_idempotent_and_name_bad_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "inflight.parquet"
    assert load_inflight(path).num_rows == 0                        # no file: nothing in flight
    assert update_inflight(path, add=[("a", 1, 10), ("b", 1, 11), ("a", 1, 10)]) == (2, 0)
    assert update_inflight(path, add=[("a", 1, 10)]) == (0, 0)
    assert update_inflight(path, remove=["a", "zzz"]) == (0, 1)
    assert _inflight_rows(path) == [("b", 1, 11)]
    assert list(tmp_path.iterdir()) == [path]                       # no temp file left behind
    pq.write_table(pa.table({"image_id": ["c"], "round": pa.array([2], pa.int32())}), path)  # no task_id column
    with pytest.raises(TableError, match=r"inflight.parquet.*task_id"):
        update_inflight(path, add=[("c", 2, 12)])
    assert pq.read_table(path).num_rows == 1                         # the bad file is left as it was


def test_push_needs_images_listed_in_the_manifest(rounds, tmp_path):
    with pytest.raises(KeyError, match="not in the manifest"):
        render_images(rounds.manifest, ["no-such-image"], tmp_path)


def test_rendered_images_keep_their_pixel_size(rounds, tmp_path):
    from PIL import Image

    rows = rounds.manifest.to_pylist()[:2]
    recs = render_images(rounds.manifest, [r["image_id"] for r in rows], tmp_path)
    for r in rows:
        with Image.open(tmp_path / recs[r["image_id"]].rel) as im:
            assert im.size == (r["width"], r["height"]) and im.mode in ("L", "RGB")
