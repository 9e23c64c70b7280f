"""The user's path on the command line: ls up/status/push/annotate-sim/progress/pull/down, the points stage and
points export/import."""

from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flows.cli import app
from nucleate.io import read_table, write_table

LABELS = ["nucleus", "micronucleus"]


def _params(path, **ls):
    """A params file with the point labels and test Label Studio settings (teacher.classes: the default, which
    includes "background")."""
    ls = {"project_title": "nucleate cli", "retries": 1, "retry_backoff_s": 0.1, **ls}
    lines = [f"labels: [{', '.join(LABELS)}]", "labelstudio:"] + [f"  {k}: {v}" for k, v in ls.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(runner, args, env=None):
    result = runner.invoke(app, [str(a) for a in args], env=env or {}, catch_exceptions=False)
    return result.exit_code, result.output


@pytest.mark.slow
def test_command_line_round(ls_data, sample_dir, sample_manifest, tmp_path):
    runner = CliRunner()
    data = ls_data
    params = _params(tmp_path / "params.yaml")
    manifest, gt = sample_manifest
    man_path = tmp_path / "manifest.parquet"
    write_table("manifest", manifest, man_path)
    ids = [r["image_id"] for r in manifest.to_pylist()[:3]]
    sel_path = tmp_path / "selection.parquet"
    write_table("selection", {"round": [1] * 3, "rank": [0, 1, 2], "image_id": ids, "strategy": ["pcoreset"] * 3,
                              "min_distance": [0.5, 0.4, 0.3]}, sel_path)
    common = ["--params", params, "--data-dir", data]
    inflight, ann = tmp_path / "inflight.parquet", tmp_path / "annotations"
    push_args = ["ls", "push", "--selection", sel_path, "--manifest", man_path, "--inflight", inflight, *common]

    code, out = _run(runner, ["ls", "status", "--data-dir", data])
    assert code == 1 and "not running" in out
    code, out = _run(runner, ["ls", "up", "--data-dir", data])
    assert code == 0 and "running at http://127.0.0.1:" in out, out
    try:
        creds = json.loads((data / "credentials.json").read_text())
        assert creds["token"] not in out and creds["password"] not in out
        code, out = _run(runner, ["ls", "status", "--data-dir", data])
        assert code == 0 and "healthy" in out

        code, out = _run(runner, push_args)
        assert code == 0 and "3 new task(s) in round 1" in out and f"3 image(s) added to {inflight}" in out, out
        code, out = _run(runner, push_args)
        assert code == 0 and "nothing created" in out and f"0 image(s) added to {inflight}" in out
        assert sorted(read_table("selection", sel_path).column("image_id").to_pylist()) == sorted(
            pq.read_table(inflight).column("image_id").to_pylist())
        code, out = _run(runner, ["ls", "progress", "--round", 1, *common])
        assert code == 0 and json.loads(out.strip().splitlines()[-1])["open"] == 3

        gt_path = sample_dir / "points.parquet"
        code, out = _run(runner, ["annotate-sim", "--points", gt_path, "--annotator", "sim@lab.org", *common])
        assert code == 0 and "3 task(s) annotated" in out, out
        code, out = _run(runner, ["ls", "progress", "--round", 1, *common])
        assert code == 0 and "3/3 finished" in out

        code, out = _run(runner, ["ls", "pull", "--annotations", ann, "--inflight", inflight, *common])
        assert code == 0 and "round 1: 3 task(s), 3 finished (0 skipped), 0 open, 0 deleted" in out, out
        assert f"3 finished or deleted task(s) cleared from {inflight}; 0 still in flight" in out
        # the labels annotators were offered: params labels, never the teacher's "background"
        config = ET.parse(ann / "round-001" / "label_config.xml").getroot()
        assert [lbl.get("value") for lbl in config.iter("Label")] == LABELS

        # wrong token for an existing server: one clear line, exit 1
        env = {"NUCLEATE_LS_URL": json.loads((data / "server.json").read_text())["url"],
               "NUCLEATE_LS_TOKEN": "definitely-wrong-token"}
        code, out = _run(runner, ["ls", "pull", "--annotations", tmp_path / "x", *common], env=env)
        assert code == 1 and "rejected the token" in out and "definitely-wrong-token" not in out
        assert not (tmp_path / "x").exists()
    finally:
        code, out = _run(runner, ["ls", "down", "--data-dir", data])
    assert code == 0 and "stopped" in out
    code, out = _run(runner, ["ls", "status", "--data-dir", data])
    assert code == 1

    # the points stage turns the saved export into points tables (no server needed)
    pts_path = tmp_path / "points.parquet"
    code, out = _run(runner, ["points", "--annotations", ann, "--manifest", man_path, "--out", pts_path,
                              "--consensus", tmp_path / "consensus.parquet", "--report", tmp_path / "report.json",
                              "--params", params])
    assert code == 0 and "points: round 1:" in out, out
    points = read_table("points", pts_path)
    assert set(points.column("image_id").to_pylist()) == set(ids)
    assert set(points.column("annotator").to_pylist()) == {"sim@lab.org"}
    assert set(points.column("label").to_pylist()) <= set(LABELS)

    # the points export to QuPath GeoJSON and COCO keypoints and read back equal
    qp, coco = tmp_path / "qupath", tmp_path / "points.coco.json"
    for fmt, dest in (("qupath", qp), ("coco", coco)):
        code, out = _run(runner, ["points", "export", "--points", pts_path, "--manifest", man_path,
                                  "--format", fmt, "--out", dest, "--params", params])
        assert code == 0, out
    assert len(list(qp.rglob("*.geojson"))) == 3
    code, out = _run(runner, ["points", "import", *sorted(qp.rglob("*.geojson")), "--format", "qupath",
                              "--manifest", man_path, "--out", tmp_path / "from_qp.parquet", "--params", params])
    assert code == 0, out
    code, out = _run(runner, ["points", "import", coco, "--format", "coco", "--manifest", man_path,
                              "--out", tmp_path / "from_coco.parquet", "--params", params])
    assert code == 0, out
    key = ["image_id", "annotation_id", "x", "y"]
    want = points.sort_by([(k, "ascending") for k in key]).to_pylist()
    for name in ("from_qp.parquet", "from_coco.parquet"):
        got = read_table("points", tmp_path / name)
        assert got.sort_by([(k, "ascending") for k in key]).to_pylist() == want


def test_cli_names_an_unreachable_url_and_writes_nothing(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    params = _params(tmp_path / "params.yaml")
    code, out = _run(CliRunner(), ["ls", "pull", "--annotations", tmp_path / "ann", "--params", params],
                     env={"NUCLEATE_LS_URL": url, "NUCLEATE_LS_TOKEN": "tok-123456"})
    assert code == 1
    assert f"error: Label Studio at {url} is not reachable" in out and "tried 2 times" in out
    assert "Traceback" not in out and "tok-123456" not in out
    assert not (tmp_path / "ann").exists()


def test_points_import_csv_rejects_bad_rows_and_strict_writes_nothing(sample_manifest, tmp_path):
    manifest, _ = sample_manifest
    man_path = tmp_path / "manifest.parquet"
    write_table("manifest", manifest, man_path)
    row = manifest.to_pylist()[0]
    name = row["path"].rsplit("/", 1)[-1]
    csv = tmp_path / "pts.csv"
    csv.write_text(f"image,x,y,label\n{name},3.5,4.5,nucleus\n{name},{row['width'] + 1},1,nucleus\n"
                   f"{name},1,1,tumour\n")
    params = _params(tmp_path / "params.yaml")
    runner = CliRunner()
    code, out = _run(runner, ["points", "import", csv, "--format", "csv", "--manifest", man_path,
                              "--out", tmp_path / "strict.parquet", "--strict", "--params", params])
    assert code == 1 and "--strict: 2 point(s) rejected" in out
    assert not (tmp_path / "strict.parquet").exists()
    code, out = _run(runner, ["points", "import", csv, "--format", "csv", "--manifest", man_path,
                              "--out", tmp_path / "ok.parquet", "--params", params])
    assert code == 0 and "line 3" in out and "outside the image" in out and "unknown label 'tumour'" in out
    table = read_table("points", tmp_path / "ok.parquet")
    assert table.select(["image_id", "x", "y", "label", "annotator"]).to_pylist() == [
        {"image_id": row["image_id"], "x": 3.5, "y": 4.5, "label": "nucleus", "annotator": "csv"}]
    assert isinstance(table, pa.Table)
