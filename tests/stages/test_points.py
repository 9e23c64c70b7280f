"""Stage ``points`` (tasks/points.py) on saved Label Studio exports written here (no server)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nucleate.annotations import collect_points, keypoint_results
from nucleate.config import LabelStudioParams
from nucleate.io import read_table, write_table
from tasks import points as stage

LABELS = ("nucleus", "micronucleus")
SIZES = {"img-a": (300, 200), "img-b": (120, 90), "img-c": (64, 64)}
USERS = {1: "ann1@lab.org", 2: "ann2@lab.org"}


def _ann(aid, user, xy, labels=None, cancelled=False, size=(300, 200), updated="2025-03-01T10:00:00Z"):
    labels = labels or ["nucleus"] * len(xy)
    return {"id": aid, "completed_by": user, "was_cancelled": cancelled, "updated_at": updated, "created_at": updated,
            "result": keypoint_results(np.asarray(xy, float).reshape(-1, 2), labels, *size)}


def _task(tid, image_id, round_no, annotations):
    w, h = SIZES.get(image_id, (10, 10))
    return {"id": tid, "data": {"image_id": image_id, "round": round_no, "width": w, "height": h},
            "annotations": annotations, "total_annotations": sum(not a["was_cancelled"] for a in annotations),
            "cancelled_annotations": sum(a["was_cancelled"] for a in annotations)}


def _save(root: Path, round_no: int, tasks, deleted=()) -> Path:
    """A round folder as `nucleate ls pull` writes it."""
    folder = root / f"round-{round_no:03d}"
    folder.mkdir(parents=True)
    (folder / "export.json").write_text(json.dumps(tasks))
    (folder / "label_config.xml").write_text("<View/>")
    server = {"label_studio": "1.23.2", "project_id": 1, "round": round_no, "pulled_at": "2025-03-02T00:00:00Z",
              "annotators": {str(k): v for k, v in USERS.items()}, "deleted_tasks": list(deleted)}
    (folder / "server.json").write_text(json.dumps(server))
    return folder


@pytest.fixture
def tree(tmp_path):
    manifest = tmp_path / "manifest.parquet"
    write_table("manifest", {"image_id": list(SIZES), "path": [f"{i}.tif" for i in SIZES],
                             "width": [w for w, _ in SIZES.values()], "height": [h for _, h in SIZES.values()],
                             "channels": [1] * 3, "dtype": ["uint16"] * 3, "split": ["pool"] * 3,
                             "bytes": [100] * 3}, manifest)
    round1 = [
        _task(1, "img-a", 1, [_ann(10, 1, [(10, 10), (50, 60), (100.5, 20.25)]),
                              _ann(11, 2, [(11, 10), (50, 61), (250, 150)])]),            # two annotators
        _task(2, "img-b", 1, [_ann(12, 1, [(5, 5), (130, 5), (7, 7)], ["nucleus", "nucleus", "background"],
                                   size=SIZES["img-b"])]),                                 # 2 points rejected
    ]
    round2 = [_task(3, "img-c", 2, [_ann(13, 1, [], cancelled=True, size=SIZES["img-c"])]),  # skipped
              _task(4, "img-a", 2, [])]                                                     # open (re-pushed)
    ann = tmp_path / "annotations"
    _save(ann, 1, round1)
    _save(ann, 2, round2, deleted=[{"image_id": "img-gone", "task_id": 5}])
    kw = {"annotations": ann, "manifest": manifest, "out": tmp_path / "points.parquet",
          "consensus": tmp_path / "consensus.parquet", "report": tmp_path / "points_report.json"}
    return kw, round1 + round2


def test_points_consensus_and_report_from_every_saved_round(tree):
    kw, tasks = tree
    params = LabelStudioParams(agreement_radius_px=4.0)
    rep = stage.run(params, LABELS, **kw)
    points = read_table("points", kw["out"])
    # exactly the pure conversion of the saved exports (annotator names from server.json)
    want = collect_points(tasks, labels=LABELS, users=USERS).points
    assert points.to_pylist() == want.to_pylist() and points.num_rows == 7
    consensus = read_table("points", kw["consensus"])
    a = sorted((r["x"], r["y"], r["annotator"]) for r in consensus.to_pylist() if r["image_id"] == "img-a")
    assert a == [(10.5, 10.0, "consensus"), (50.0, 60.5, "consensus"), (100.5, 20.25, "consensus"),
                 (250.0, 150.0, "consensus")]                   # 2 annotators, min_fraction 0.5: either one
    assert rep.points == 7 and rep.consensus_points == 5

    report = json.loads(kw["report"].read_text())
    r1, r2 = report["rounds"]["1"], report["rounds"]["2"]
    assert (r1["tasks"], r1["finished"], r1["skipped_tasks"], r1["open"], r1["points"]) == (2, 2, 0, 0, 7)
    assert r1["rejected_points"] == 2 and "outside the image" in r1["rejected"][0]
    assert "unknown label 'background'" in r1["rejected"][1]        # the teacher's class is not a point label
    (pair,) = r1["agreement"]["pairs"]
    assert (pair["annotator_a"], pair["annotator_b"], pair["matched"]) == ("ann1@lab.org", "ann2@lab.org", 2)
    assert pair["f1"] == pytest.approx(2 * 2 / 6)
    assert (r2["tasks"], r2["finished"], r2["skipped_tasks"], r2["open"], r2["deleted"]) == (2, 1, 1, 1, ["img-gone"])
    assert r2["agreement"]["mean_image_f1"] is None
    totals = ("tasks", "skipped_tasks", "deleted_tasks", "rejected_points")
    assert [report[k] for k in totals] == [4, 1, 1, 2]
    assert report["consensus_points"] == 5 and report["rounds_count"] == 2
    # finished = annotated or skipped (img-c: skipped, no point); img-a of round 2 is still open
    assert r2["finished_image_ids"] == ["img-c"] and r1["finished_image_ids"] == ["img-a", "img-b"]
    assert report["finished_image_ids"] == ["img-a", "img-b", "img-c"] and report["last_round"] == 2
    assert rep.lines()[0].startswith("points: round 1: 7 points from 3 annotation(s) on 2/2 finished task(s)")


def _cli(kw, tmp_path, annotations):
    from flows.cli import app

    params = tmp_path / "params.yaml"
    params.write_text("labels: [nucleus, micronucleus]\n")
    args = ["points", "--annotations", annotations, "--manifest", kw["manifest"], "--out", kw["out"],
            "--consensus", kw["consensus"], "--report", kw["report"], "--params", params]
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


@pytest.mark.parametrize("make", [False, True])
def test_no_saved_exports_is_one_line_naming_the_folder_and_the_pull(tree, tmp_path, make):
    kw, _ = tree
    empty = tmp_path / "fresh" / "annotations"
    if make:
        empty.mkdir(parents=True)
    code, out = _cli(kw, tmp_path, empty)
    assert code == 1 and len(out.strip().splitlines()) == 1, out
    assert out.startswith(f"error: {empty}: no saved Label Studio exports") and "`nucleate ls pull`" in out
    assert not kw["out"].exists() and not kw["report"].exists()


def test_a_task_whose_image_is_not_in_the_manifest_names_the_round_folder_and_task(tree, tmp_path):
    kw, _ = tree
    _save(kw["annotations"], 3, [_task(9, "img-unknown", 3, [])])
    code, out = _cli(kw, tmp_path, kw["annotations"])
    assert code == 1 and len(out.strip().splitlines()) == 1, out
    assert f"{kw['annotations'] / 'round-003' / 'export.json'}: task 9: image_id 'img-unknown' is not in" in out


@pytest.mark.parametrize(("cut", "says"), [(-30, "not a valid Label Studio export (element 1: "),
                                          (None, "expected a JSON list, got an object")])
def test_a_truncated_or_wrong_export_is_one_line_and_writes_nothing(tree, tmp_path, cut, says):
    """The export is read task by task (bounded memory), so a bad spot late in the file is found mid-conversion:
    still one line naming the file and the pull that fixes it, and nothing written."""
    kw, _ = tree
    folder = _save(kw["annotations"], 3, [_task(20, "img-c", 3, []), _task(21, "img-a", 3, [])])
    export = folder / "export.json"
    text = export.read_text()
    export.write_text(text[:cut] if cut else json.dumps({"tasks": json.loads(text)}))
    code, out = _cli(kw, tmp_path, kw["annotations"])
    assert code == 1 and len(out.strip().splitlines()) == 1, out
    assert out.startswith(f"error: {export}: ") and says in out and "`nucleate ls pull --round 3`" in out
    assert not kw["out"].exists() and not kw["report"].exists()


def test_outputs_are_written_all_or_nothing(tree, monkeypatch):
    kw, _ = tree
    stage.run(LabelStudioParams(), LABELS, **kw)
    paths = [kw["out"], kw["consensus"], kw["report"]]
    before = [p.read_bytes() for p in paths]
    _save(kw["annotations"], 3, [_task(20, "img-c", 3, [_ann(21, 1, [(3, 3)], size=SIZES["img-c"])])])
    real = stage.write_table
    calls = []

    def fail_second(kind, table, path, **kwargs):                 # fault: the disk fills up mid-write
        calls.append(path)
        if len(calls) == 2:
            raise OSError("No space left on device")
        return real(kind, table, path, **kwargs)

    monkeypatch.setattr(stage, "write_table", fail_second)
    with pytest.raises(OSError):
        stage.run(LabelStudioParams(), LABELS, **kw)
    assert [p.read_bytes() for p in paths] == before
    assert sorted(p.name for p in kw["out"].parent.iterdir()) == sorted(
        ["annotations", "manifest.parquet", "points.parquet", "consensus.parquet", "points_report.json"])
