"""flows.report: the round report from a project's files — constructed inputs, a real Label Studio round, and the
Prefect artifacts it publishes."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from flows.report import CURVE_KEYS, round_report
from nucleate.annotations import keypoint_results
from nucleate.config import LabelStudioParams, Params
from nucleate.io import Layout, write_table
from tasks.evaluate import CURVE_COLUMNS

PARAMS = Params()


# -- inputs in the real writers' formats ----------------------------------------------------------------------
def _json(path: Path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def _selection(layout: Layout, n: int, ids: list[str], dists: list[float | None], strategy="pcoreset") -> None:
    write_table("selection", {"round": [n] * len(ids), "rank": list(range(len(ids))), "image_id": ids,
                              "strategy": [strategy] * len(ids), "min_distance": dists},
                layout.path("selection"), metadata={"budget": len(ids), "space": "teacher"})


def _curve(layout: Layout, rows: list[dict]) -> None:
    """plots/learning_curve.csv as tasks/evaluate.py writes it (CURVE_COLUMNS, empty cells for unknowns)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=CURVE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: "" if r.get(c) is None else str(r[c]) for c in CURVE_COLUMNS} for r in rows)
    path = layout.path("plots") / "learning_curve.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buffer.getvalue())


def _split(dice, aji, pq, f1):
    return {"dice": dice, "object_dice": dice - 0.01, "aji": aji, "pq": pq, "dq": 0.9, "sq": 0.8, "f1": f1,
            "precision": f1, "recall": f1, "n_images": 2, "n_gt_nuclei": 50, "n_pred": 48}


def _stage_outputs(layout: Layout, n: int, points: int) -> None:
    """metrics.json, model card and pseudomask QC of round ``n`` in tasks/evaluate, train, pseudomasks formats."""
    card = {"round": n, "supervision": "points", "images": 2, "points": points, "epochs": 2, "steps": 8,
            "seconds": 3.5, "device": "cpu", "torch": "2.x", "nucleate": "0.x", "created_at": "2026-01-01T00:00:00",
            "metrics": {"gold_pixel_dice": 0.81, "final_loss": 0.4321}}
    _json(layout.path("model") / "model_card.json", card)
    _json(layout.path("metrics"), {
        "round": n, "model": {k: card[k] for k in ("round", "supervision", "images", "points")},
        "averaging": "mean over images (Qu et al. 2019)", "params": {"iou_threshold": 0.5, "match_radius_px": 6.0},
        "splits": {"gold": _split(0.9, 0.7, 0.6, 0.95), "test": _split(0.91, 0.72, 0.63, 0.96)}, "images": []})
    _json(layout.path("pseudomask_qc"), {
        "method": "voronoi_cluster", "floors": {"min_gold_dice": 0.5, "min_gold_labeled_fraction": 0.01,
                                                "min_gold_whole_dice": 0.3},
        "gold_mean": {"labeled_dice": 0.9, "coverage": 0.2, "whole_dice": 0.7, "whole_aji": 0.5},
        "gold_mean_labeled_dice": 0.9, "gold": {"g1": {"path": "gold/a.png"}}, "images": 2, "points": points,
        "instances": points + 3, "unclicked": 3})


# -- constructed exports: exact numbers, missing inputs, determinism --------------------------------------------
def _task(tid, n, lead_times, points=3, skipped=False, prediction=None):
    xy = np.column_stack([np.arange(points) * 10.0 + 5, np.full(points, 7.0)])
    result = keypoint_results(xy, ["nucleus"] * points, 100, 50)
    anns = [{"id": tid * 10 + k, "completed_by": 1, "result": [] if skipped else result, "lead_time": t,
             "was_cancelled": skipped, "prediction": prediction or {}} for k, t in enumerate(lead_times)]
    return {"id": tid, "data": {"image_id": f"img{tid}", "round": n, "width": 100, "height": 50,
                                "name": f"pool/img{tid}.png"}, "annotations": anns}


def _constructed(tmp_path: Path, *, outputs: bool = True) -> tuple[Path, Layout]:
    project = tmp_path / "proj"
    layout = Layout(project / "storage")
    pred = {"id": 1, "result": keypoint_results(np.array([[5.0, 7.0], [15.2, 7.0], [90.0, 40.0]]),
                                                ["nucleus"] * 3, 100, 50)}
    exports = {1: [_task(1, 1, [30.0]), _task(2, 1, [30.0], skipped=True)],              # 1 min
               2: [_task(3, 2, [45.0, 15.0], prediction=pred), _task(4, 2, [])]}         # 1 min, 1 open
    for n, tasks in exports.items():
        folder = layout.round_dir(n)
        folder.mkdir(parents=True)
        (folder / "export.json").write_text(json.dumps(tasks))
    if outputs:
        _selection(layout, 2, ["img3", "img4"], [0.5, 0.25])
        _stage_outputs(layout, 2, points=9)
        _json(layout.path("points_report"), {"rounds": {"2": {
            "tasks": 2, "finished": 1, "annotated_tasks": 1, "skipped_tasks": 0, "open": 1, "annotations": 2,
            "skipped_annotations": 0, "superseded_annotations": 1, "points": 3, "rejected_points": 0, "rejected": [],
            "deleted_tasks": 0, "agreement": {"radius_px": 6.0, "images": 0, "mean_image_f1": None, "pairs": []}}}})
        _curve(layout, [{"round": 1, "images": 1, "clicks": 3, "test_dice": 0.5, "test_aji": 0.3, "test_pq": 0.2,
                         "test_f1": 0.6, "gold_dice": 0.4, "gold_aji": 0.25},
                        {"round": 2, "images": 2, "clicks": 9, "test_dice": 0.91, "test_aji": 0.72, "test_pq": 0.63,
                         "test_f1": 0.96, "gold_dice": 0.9, "gold_aji": 0.7},
                        {"round": 3, "images": 4, "clicks": 20, "test_dice": 0.95}])
    return project, layout


def test_constructed_round_numbers_curve_and_files(tmp_path):
    project, layout = _constructed(tmp_path)
    report = round_report(project, 2, PARAMS)
    md = report.markdown
    # selection: strategy, images, coverage radius = the last pick's min_distance; names from the export
    assert "- strategy: pcoreset (space: teacher)" in md and "- images: 2 (budget 2)" in md
    assert "- coverage radius: 0.2500" in md and "| 0 | pool/img3.png | `img3` | 0.5000 |" in md
    # cost: two finished annotations of task 3 (45 s, 15 s; 3 points each), round 2 = 1 min, rounds 1-2 = 2 min
    e = report.effort
    assert e["seconds_per_image"] == {"mean": 30.0, "median": 30.0} and e["annotator_minutes"] == 1.0
    assert e["seconds_per_click"]["pooled"] == 10.0 and e["open_tasks"] == 1
    assert "idle time included" in md and "1.0 this round (0.0 on skipped tasks); 2.0 over rounds 1–2" in md
    # pre-annotations: (5, 7) kept, (15.2, 7) moved 0.2 px -> kept, (90, 40) deleted, (25, 7) added — twice
    p = e["preannotations"]
    assert (p["annotations"], p["kept"], p["moved"], p["deleted"], p["added"], p["matched"]) == (2, 4, 0, 2, 2, 4)
    assert "| 4 | 0 | 2 | 2 | 4 | 0.667 |" in md
    # the curve stops at this round; annotator minutes are cumulative over the exports
    assert [r["round"] for r in report.curve] == [1, 2] and list(report.curve[0]) == list(CURVE_KEYS)
    assert [r["annotator_minutes"] for r in report.curve] == [1.0, 2.0]
    assert report.curve[1]["test_pq"] == 0.63 and report.curve[1]["clicks"] == 9
    assert "| 2 | 2 | 9 | 2.0 | 0.910 | 0.720 | 0.630 | 0.960 | 0.900 | 0.700 |" in md
    assert "| test | 2 | 50 | 0.910 | 0.900 | 0.720 | 0.630 | 0.960 |" in md
    assert "whole-image AJI | 0.500 | –" in md and "superseded" in md
    assert "Not available" not in md and "2026-01-01" not in md and str(tmp_path) not in md

    written = report.write()
    assert written == [layout.path("reports") / "learning_curve.png", layout.path("reports") / "round-002.md"]
    assert written[1].read_text() == md and "![learning curve](learning_curve.png)" in md
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = {p.name: p.read_bytes() for p in written}
    again = round_report(project, 2, PARAMS)                                 # closing the round again: same bytes
    assert again.markdown == md
    again.write(layout.path("reports"))
    assert {p.name: p.read_bytes() for p in written} == first
    assert sorted(p.name for p in layout.path("reports").iterdir()) == ["learning_curve.png", "round-002.md"]


def test_missing_inputs_say_which_file(tmp_path):
    project, layout = _constructed(tmp_path, outputs=False)
    md = round_report(project, 2, PARAMS).markdown
    for rel in ("storage/selection.parquet", "storage/points_report.json", "storage/pseudomask_qc.json",
                "storage/model/model_card.json", "storage/metrics.json", "storage/plots/learning_curve.csv"):
        assert f"Not available ({rel})." in md
    assert "## Annotation cost" in md and "Not available (storage/annotations" not in md

    layout.path("metrics").write_text("{not json")                           # unreadable: named, no traceback
    _selection(layout, 1, ["img1"], [None], strategy="random")               # an older round's selection
    report = round_report(project, 3, PARAMS)                                # a round with no export at all
    assert "Not available (storage/metrics.json: not readable JSON (JSONDecodeError))." in report.markdown
    assert "Not available (storage/selection.parquet holds round 1, not round 3)." in report.markdown
    assert "Not available (storage/annotations/round-003/export.json)." in report.markdown
    assert report.effort is None and report.curve == [] and report.png is None
    assert [p.name for p in report.write()] == ["round-003.md"]


def test_no_predictions_and_a_random_selection(tmp_path):
    project, layout = _constructed(tmp_path)
    _selection(layout, 1, ["img1", "img2"], [None, None], strategy="random")
    md = round_report(project, 1, PARAMS).markdown
    assert "coverage radius: – (random records no distance)" in md
    assert "No annotation of this round was made on a pre-annotation" in md
    assert "**The model card is of round 2, not 1.**" in md and "**metrics.json is of round 2, not 1.**" in md


# -- a real Label Studio round ----------------------------------------------------------------------------------
def _far_points(gt_xy: np.ndarray, width: int, height: int, k: int, gap: float) -> np.ndarray:
    """``k`` points inside the image at least ``gap`` px from every ground-truth point."""
    grid = np.stack(np.meshgrid(np.arange(8, width - 8, 9.0), np.arange(8, height - 8, 9.0)), -1).reshape(-1, 2)
    far = grid[np.min(np.linalg.norm(grid[:, None] - gt_xy[None], axis=2), axis=1) >= gap]
    assert len(far) >= k
    return far[np.linspace(0, len(far) - 1, k).astype(int)]


@pytest.mark.slow
def test_real_round_counts_match_the_simulated_annotator(ls_adapter, rounds, tmp_path):
    """Push 3 images (2 with pre-annotations: ground truth minus every 4th nucleus plus 3 points far from any),
    annotate 2 with annotate_sim (posts lead_time), skip the third, pull, run the points stage, report."""
    from flows.annotate_sim import annotate_sim
    from flows.ls_pull import pull
    from tasks import points as points_stage

    gt, ids = rounds.gt, rounds.pick(3, square=None)
    parts, spurious = [], 0
    for image_id in ids[:2]:
        truth = gt.filter(pc.equal(gt.column("image_id"), image_id))
        xy = np.column_stack([truth.column("x").to_numpy(), truth.column("y").to_numpy()])
        keep = np.arange(len(xy)) % 4 != 3
        far = _far_points(xy, *rounds.sizes[image_id], k=3, gap=20.0)
        spurious += len(far)
        parts.append(pa.table({"image_id": [image_id] * int(keep.sum() + len(far)),
                               "x": np.r_[xy[keep, 0], far[:, 0]], "y": np.r_[xy[keep, 1], far[:, 1]],
                               "label": truth.column("label").to_numpy(zero_copy_only=False)[keep].tolist()
                               + ["nucleus"] * len(far)}))
    pid, pushed = rounds.push(ls_adapter, ids, predictions=pa.concat_tables(parts), model_version="round-000")
    assert pushed.predictions == 2
    ls_adapter.annotate(pushed.created[ids[2]], [], was_cancelled=True, lead_time=7.0)   # skipped after 7 s
    sim_params = LabelStudioParams(sim_miss_rate=0.0, sim_false_click_rate=0.0)
    sim = annotate_sim(ls_adapter, pid, gt, annotator="ann@lab.org", params=sim_params, seed=3, limit=2,
                       labels=rounds.labels)
    assert sorted(sim.annotated) == sorted(ids[:2]) and sim.accepted_predictions > 0

    project = tmp_path / "proj"
    layout = Layout(project / "storage")
    pull(ls_adapter, pid, annotations=layout.path("annotations"))
    write_table("manifest", rounds.manifest, layout.path("manifest"))
    points_stage.run(PARAMS.labelstudio, rounds.labels, annotations=layout.path("annotations"),
                     manifest=layout.path("manifest"), out=layout.path("points"), consensus=layout.path("consensus"),
                     report=layout.path("points_report"))
    _selection(layout, 1, ids, [0.3, 0.2, 0.1])
    _stage_outputs(layout, 1, points=sim.clicks)
    _curve(layout, [{"round": 1, "images": 2, "clicks": sim.clicks, "test_dice": 0.8, "test_aji": 0.6,
                     "test_pq": 0.5, "test_f1": 0.9, "gold_dice": 0.79, "gold_aji": 0.58}])

    params = Params(labels=rounds.labels)
    report = round_report(project, 1, params)
    e, p = report.effort, report.effort["preannotations"]
    # what the annotator did, counted back from the raw export
    assert (e["tasks"], e["annotated_tasks"], e["skipped_tasks"], e["annotations"], e["skipped_annotations"]) == \
        (3, 2, 1, 2, 1)
    assert e["points"] == sim.clicks and e["untimed_annotations"] == 0
    assert (p["annotations"], p["kept"] + p["moved"], p["moved"]) == (2, sim.accepted_predictions, 0)
    assert p["added"] == sim.clicks - sim.accepted_predictions and p["final"] == sim.clicks
    assert p["deleted"] == spurious and p["predicted"] == sim.accepted_predictions + spurious
    # annotate_sim posts lead_time = 5 s + 1.5 s per click per image; plus the 7 s skip
    assert e["annotator_minutes"] == round((2 * 5.0 + 1.5 * sim.clicks + 7.0) / 60, 2)
    assert report.curve[0]["annotator_minutes"] == e["annotator_minutes"]
    md = report.markdown
    assert f"| {p['kept']} | 0 | {spurious} | {p['added']} | {p['kept']} |" in md
    assert "- tasks: 3; finished 3 (annotated 2, skipped 1); open 0" in md
    assert "Not available" not in md
    assert round_report(project, 1, params).markdown == md                   # deterministic


# -- Prefect artifacts --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_publish_creates_markdown_and_table_artifacts(prefect_api, tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    project, _ = _constructed(tmp_path)
    report = round_report(project, 2, PARAMS)
    assert report.publish() is None                                          # outside a flow run: nothing

    @flow
    def close():
        return report.publish()

    made = close()
    assert set(made) == {"round-002-report", "learning-curve"}
    with get_client(sync_client=True) as client:
        found = {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(made))))}
    md = found["round-002-report"]
    assert md.type == "markdown" and str(md.id) == made["round-002-report"]
    assert "## Pre-annotations" in md.data and "](data:image/png;base64,iVBORw0KGgo" in md.data
    assert "](learning_curve.png)" not in md.data
    table = found["learning-curve"]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert table.type == "table" and rows == report.curve

    older = round_report(project, 1, PARAMS)                                 # from an async flow too

    @flow
    async def close_async():
        return older.publish()

    made = asyncio.run(close_async())
    with get_client(sync_client=True) as client:
        (md,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["round-001-report"])))
    assert str(md.id) == made["round-001-report"] and md.data.startswith("# Round 1 report")
