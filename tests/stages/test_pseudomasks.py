"""Stage pseudomasks on the real sample data: the maps + index, the gold QC gate, bad and missing input, CLI."""

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from flows.cli import app
from nucleate.config import PseudomaskParams
from nucleate.io import MissingInput, content_id, read_image, read_labels, read_table, table_metadata, write_table
from tasks import pseudomasks

POOL_IMAGES = ("pool/2023-05-31_misc_1.tif", "pool/2022-04-14_RPE1_5.tif")
PARAMS = PseudomaskParams()  # the params.yaml values


@pytest.fixture(scope="module")
def project(sample_dir, tmp_path_factory):
    """Manifest of the 3 gold + 2 pool sample images and their GT points as the clicks (keeps it fast)."""
    root = tmp_path_factory.mktemp("project")
    images = sample_dir / "images"
    rows = []
    for rel in sorted([*POOL_IMAGES, *(f"gold/{p.name}" for p in (images / "gold").glob("*.tif"))]):
        pixels = read_image(images / rel)
        rows.append({"image_id": content_id(images / rel), "path": rel, "width": pixels.shape[1],
                     "height": pixels.shape[0], "channels": 1 if pixels.ndim == 2 else 3, "dtype": str(pixels.dtype),
                     "split": rel.split("/")[0], "bytes": (images / rel).stat().st_size})
    write_table("manifest", pa.Table.from_pylist(rows), root / "manifest.parquet", metadata={"root": str(images)})
    keep = [r["image_id"] for r in rows]
    points = read_table("points", sample_dir / "points.parquet")
    points = points.filter(pc.is_in(points.column("image_id"), pa.array(keep)))
    write_table("points", points, root / "consensus.parquet")
    return {"root": root, "manifest": root / "manifest.parquet", "points": root / "consensus.parquet",
            "masks": sample_dir / "masks", "keep": keep, "n_points": points.num_rows}


def _run(project, out, pseudomask=PARAMS, **kwargs):
    paths = {"points": project["points"], "manifest": project["manifest"], "out": out, **kwargs}
    return pseudomasks.run(pseudomask, 0, **paths)


def test_writes_both_labels_and_the_combined_map_and_passes_gold_qc(project, tmp_path):
    out, qc = tmp_path / "pseudomasks", tmp_path / "qc.json"
    report = _run(project, out, gold_masks=project["masks"], qc=qc)
    index = read_table("pseudomask_index", out / "index.parquet")
    assert sorted(index.column("image_id").to_pylist()) == sorted(project["keep"])
    assert set(index.column("method").to_pylist()) == {"voronoi_cluster"}
    assert sum(index.column("n_points").to_pylist()) == project["n_points"] == report.points
    meta = table_metadata(index)
    assert meta["seed"] == 0 and meta["params"] == dataclasses.asdict(PARAMS)
    for row in index.to_pylist():
        assert row["voronoi_path"] == f"voronoi/{row['image_id']}.png"
        assert row["cluster_path"] == f"cluster/{row['image_id']}.png"
        maps = {k: read_labels(out / row[f"{k}_path"]) for k in ("semantic", "voronoi", "cluster")}
        instances = read_labels(out / row["instances_path"])
        for m in maps.values():
            assert m.shape == instances.shape and set(np.unique(m)) <= {0, 1, 255}  # (read back as int32)
        assert len(np.unique(instances[instances > 0])) == row["n_instances"]
        assert np.isin(np.arange(1, row["n_points"] + 1), instances).all()  # every click has its nucleus
        assert ((instances > 0) == (maps["semantic"] == 1)).all()
        assert (maps["semantic"][maps["voronoi"] == 0] == 0).all()  # the combined map keeps the boundaries
        labeled = {k: (m != 255).mean() for k, m in maps.items()}
        assert labeled["voronoi"] < 0.2 and labeled["cluster"] > labeled["voronoi"]
    assert len(report.gold) == 3 and report.gold_mean["labeled_dice"] >= PARAMS.min_gold_dice
    assert report.qc.startswith("passed on 3 gold image(s)") and report.lines()[1] == f"qc: {report.qc}"
    saved = json.loads(qc.read_text())
    assert saved["gold_mean"] == report.gold_mean and len(saved["gold"]) == 3
    assert saved["floors"] == {"min_gold_dice": PARAMS.min_gold_dice,
                               "min_gold_labeled_fraction": PARAMS.min_gold_labeled_fraction,
                               "min_gold_whole_dice": PARAMS.min_gold_whole_dice}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pseudomasks", "qc.json"]  # no temp folders left
    assert report.as_dict()["index"] == str(out / "index.parquet")


def test_gold_qc_failure_writes_nothing_and_names_the_images(project, tmp_path):
    out = tmp_path / "pseudomasks"
    out.mkdir()
    (out / "previous.txt").write_text("an older run")
    with pytest.raises(pseudomasks.QCError) as err:
        _run(project, out, dataclasses.replace(PARAMS, min_gold_dice=0.999), gold_masks=project["masks"],
             qc=tmp_path / "qc.json")
    message = str(err.value)
    assert "QC failed" in message and "< pseudomask.min_gold_dice 0.999" in message and "nothing written" in message
    assert message.count("gold/") == 3 and message.count("labeled-pixel Dice") == 4
    assert "whole-image Dice" not in message  # only the failing measure is named
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]  # old output untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pseudomasks"]  # no qc file, no temp folder


def test_a_voronoi_only_label_fails_the_coverage_and_whole_dice_floors(project, tmp_path):
    """Voronoi labels are right where they label (labeled Dice ~0.96) but cover ~4 % of the image."""
    with pytest.raises(pseudomasks.QCError) as err:
        _run(project, tmp_path / "pm", dataclasses.replace(PARAMS, method="voronoi"), gold_masks=project["masks"])
    message = str(err.value)
    assert f"< pseudomask.min_gold_labeled_fraction {PARAMS.min_gold_labeled_fraction}" in message
    assert f"< pseudomask.min_gold_whole_dice {PARAMS.min_gold_whole_dice}" in message
    assert "min_gold_dice" not in message  # its labeled-pixel Dice passes
    lines = [line for line in message.splitlines() if line.startswith("  gold/")]
    assert len(lines) == 3
    for line in lines:  # each gold image, with the failing measures
        assert "labeled fraction 0.0" in line and "whole-image Dice" in line and line.count("(below the floor)") == 2
    assert not (tmp_path / "pm").exists()


def test_qc_skipped_without_gold_masks_and_voronoi_writes_no_cluster_map(project, tmp_path):
    report = _run(project, tmp_path / "pm", dataclasses.replace(PARAMS, method="voronoi", min_gold_dice=0.999))
    assert report.gold == {} and report.qc == "skipped (no --gold-masks given)"
    index = read_table("pseudomask_index", tmp_path / "pm" / "index.parquet")
    assert set(index.column("cluster_path").to_pylist()) == {None}
    assert not (tmp_path / "pm" / "cluster").exists() and (tmp_path / "pm" / "voronoi").is_dir()


def _points_with(project, tmp_path, **change):
    table = read_table("points", project["points"])
    rows = table.to_pylist()
    rows[7].update(change)
    path = tmp_path / "points.parquet"
    write_table("points", pa.Table.from_pylist(rows, schema=table.schema), path)
    return path, rows[7]["image_id"]


def test_point_outside_image_names_row_and_image(project, tmp_path):
    path, image_id = _points_with(project, tmp_path, x=5000.0)
    with pytest.raises(pseudomasks.PseudomaskError) as err:
        _run(dict(project, points=path), tmp_path / "pm")
    message = str(err.value)
    assert "row 7" in message and image_id in message and "x=5000" in message and "outside" in message
    assert not (tmp_path / "pm").exists()


def test_unknown_image_duplicates_and_determinism(project, tmp_path):
    path, _ = _points_with(project, tmp_path, image_id="f" * 32)
    with pytest.raises(pseudomasks.PseudomaskError, match=r"row 7: image_id f{32} is not in the manifest"):
        _run(dict(project, points=path), tmp_path / "pm")
    table = read_table("points", project["points"])
    write_table("points", pa.concat_tables([table, table]), tmp_path / "doubled.parquet")
    a = _run(dict(project, points=tmp_path / "doubled.parquet"), tmp_path / "a")
    b = _run(project, tmp_path / "b")
    assert a.points == b.points == project["n_points"]  # duplicate points collapse
    for row in read_table("pseudomask_index", tmp_path / "a" / "index.parquet").to_pylist():  # deterministic
        for key in ("semantic_path", "instances_path", "voronoi_path", "cluster_path"):
            a_map, b_map = read_labels(tmp_path / "a" / row[key]), read_labels(tmp_path / "b" / row[key])
            np.testing.assert_array_equal(a_map, b_map)


def test_instance_ids_follow_the_point_rows(project, tmp_path):
    """Instance i of an image is the nucleus of its i-th point row (in table order)."""
    _run(project, tmp_path / "pm")
    index = {r["image_id"]: r for r in read_table("pseudomask_index", tmp_path / "pm" / "index.parquet").to_pylist()}
    points = read_table("points", project["points"]).to_pylist()
    image_id = points[0]["image_id"]
    mine = [p for p in points if p["image_id"] == image_id]
    instances = read_labels(tmp_path / "pm" / index[image_id]["instances_path"])
    for i, p in enumerate(mine, 1):
        assert instances[int(p["y"]), int(p["x"])] == i


def test_missing_inputs_say_what_produces_them(project, tmp_path):
    with pytest.raises(MissingInput, match=r"none.parquet: consensus not found; produce it with `nucleate points`"):
        _run(dict(project, points=tmp_path / "none.parquet"), tmp_path / "pm")
    with pytest.raises(MissingInput, match=r"nope.parquet: manifest not found; produce it with `nucleate ingest"):
        _run(dict(project, manifest=tmp_path / "nope.parquet"), tmp_path / "pm")
    with pytest.raises(MissingInput, match=r"masks: gold masks folder not found"):
        _run(project, tmp_path / "pm", gold_masks=tmp_path / "masks")
    assert not (tmp_path / "pm").exists()


def test_cli_runs_and_reports_errors_in_one_line(project, tmp_path, repo_root):
    runner = CliRunner()
    args = ["pseudomasks", "--points", str(project["points"]), "--manifest", str(project["manifest"]),
            "--params", str(repo_root / "params.yaml")]
    ok = runner.invoke(app, [*args, "--out", str(tmp_path / "pm"), "--qc", str(tmp_path / "qc.json")])
    assert ok.exit_code == 0, ok.output
    assert "pseudomasks: 5 images" in ok.output and "qc: skipped (no --gold-masks given)" in ok.output
    assert json.loads((tmp_path / "qc.json").read_text())["images"] == 5
    missing = runner.invoke(app, ["pseudomasks", "--points", str(tmp_path / "none.parquet"), "--manifest",
                                  str(project["manifest"]), "--out", str(tmp_path / "y"), "--qc", str(tmp_path / "q")])
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    (line,) = [x for x in missing.output.splitlines() if x.strip()]
    assert line.startswith("error: ") and "consensus not found; produce it with `nucleate points`" in line
    bad = tmp_path / "bad.yaml"
    bad.write_text("pseudomask:\n  method: blobs\n")
    wrong = runner.invoke(app, [*args[:-2], "--params", str(bad), "--out", str(tmp_path / "x")])
    assert wrong.exit_code == 1
    assert "pseudomask.method: must be one of voronoi, cluster, voronoi_cluster" in wrong.output


@pytest.mark.slow
def test_dvc_repro_pseudomasks_stage(repo_root, tmp_path):
    """The real dvc.yaml stage: sample data -> ingest -> (GT points as the consensus clicks) -> pseudomasks."""
    import os
    import shutil
    import subprocess
    import sys

    def sh(*args):
        env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               "DVC_NO_ANALYTICS": "1"}
        return subprocess.run(args, cwd=repo, env=env, check=True, capture_output=True, text=True)

    repo = tmp_path / "project"
    for rel in ("dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore", "storage/.gitignore"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo_root / rel, repo / rel)
    for rel in ("tasks", "src/nucleate"):
        shutil.copytree(repo_root / rel, repo / rel, ignore=shutil.ignore_patterns("__pycache__"))
    sh("git", "init", "-q")
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    sh(sys.executable, "-m", "dvc", "repro", "ingest")
    shutil.copyfile(repo / "storage/sample/points.parquet", repo / "storage/consensus.parquet")  # simulated clicks
    out = sh(sys.executable, "-m", "dvc", "repro", "--single-item", "pseudomasks")
    assert "Running stage 'pseudomasks'" in out.stdout
    index = read_table("pseudomask_index", repo / "storage/pseudomasks/index.parquet")
    assert index.num_rows == 49
    qc = json.loads((repo / "storage/pseudomask_qc.json").read_text())
    assert len(qc["gold"]) == 3 and qc["gold_mean"]["labeled_dice"] >= qc["floors"]["min_gold_dice"]
    again = sh(sys.executable, "-m", "dvc", "repro", "--single-item", "pseudomasks")
    assert "Running stage" not in again.stdout
