"""Stage pseudomasks on the real sample data: masks + index, gold QC gate, bad points, CLI."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from flows.cli import app
from nucleate.config import Params, params_from_dict
from nucleate.io import read_labels, read_table, table_metadata, write_table
from tasks import ingest, pseudomasks

POOL_IMAGES = ("pool/2023-05-31_misc_1.tif", "pool/2022-04-14_RPE1_5.tif")


@pytest.fixture(scope="module")
def project(sample_dir, tmp_path_factory):
    """Manifest of the real sample images + the GT points of the 3 gold and 2 pool images (keeps it fast)."""
    root = tmp_path_factory.mktemp("project")
    ingest.run(sample_dir / "images", root / "manifest.parquet", log=lambda _: None)
    manifest = read_table("manifest", root / "manifest.parquet")
    keep = [r["image_id"] for r in manifest.to_pylist() if r["split"] == "gold" or r["path"] in POOL_IMAGES]
    points = read_table("points", sample_dir / "points.parquet")
    points = points.filter(pc.is_in(points.column("image_id"), pa.array(keep)))
    write_table("points", points, root / "points.parquet")
    return {"root": root, "manifest": root / "manifest.parquet", "points": root / "points.parquet",
            "masks": sample_dir / "masks", "images": manifest, "keep": keep, "n_points": points.num_rows}


def _params(**pseudomask):
    base = Params()
    return params_from_dict({"pseudomask": {"nucleus_radius_px": base.pseudomask.nucleus_radius_px, **pseudomask}})


def test_writes_one_mask_per_annotated_image_and_passes_gold_qc(project, tmp_path):
    out, qc = tmp_path / "pseudomasks", tmp_path / "qc.json"
    lines = []
    report = pseudomasks.run(project["points"], project["manifest"], out, params=Params(),
                             gold_masks=project["masks"], qc=qc, log=lines.append)
    index = read_table("pseudomask_index", out / "index.parquet")
    assert sorted(index.column("image_id").to_pylist()) == sorted(project["keep"])
    assert set(index.column("method").to_pylist()) == {"voronoi_cluster"}
    assert sum(index.column("n_points").to_pylist()) == project["n_points"] == report.points
    assert table_metadata(index)["options"]["seed"] == 0
    for row in index.to_pylist():
        semantic = read_labels(out / row["semantic_path"])
        instances = read_labels(out / row["instances_path"])
        assert set(np.unique(semantic)) <= {0, 1, 255}
        assert len(np.unique(instances[instances > 0])) == row["n_instances"] == row["n_points"]
        assert ((instances > 0) == (semantic == 1)).all()
    assert len(report.gold) == 3 and report.gold_mean_dice >= Params().pseudomask.min_gold_dice
    assert any("passed" in line for line in lines)
    saved = json.loads(qc.read_text())
    assert saved["gold_mean_labeled_dice"] == report.gold_mean_dice and len(saved["gold"]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pseudomasks", "qc.json"]  # no temp folders left


def test_gold_qc_failure_writes_nothing_and_names_the_images(project, tmp_path):
    out = tmp_path / "pseudomasks"
    out.mkdir()
    (out / "previous.txt").write_text("an older run")
    with pytest.raises(pseudomasks.QCError) as err:
        pseudomasks.run(project["points"], project["manifest"], out, params=_params(min_gold_dice=0.999),
                        gold_masks=project["masks"], qc=tmp_path / "qc.json", log=lambda _: None)
    message = str(err.value)
    assert "QC failed" in message and "< pseudomask.min_gold_dice 0.999" in message
    assert message.count("gold/") == 3 and "labeled-pixel Dice" in message
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]  # old output untouched
    assert not (tmp_path / "qc.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pseudomasks"]


def test_qc_skipped_without_gold_masks(project, tmp_path):
    lines = []
    report = pseudomasks.run(project["points"], project["manifest"], tmp_path / "pm",
                             params=_params(min_gold_dice=0.999), log=lines.append)
    assert report.gold == {} and any("gold gate skipped" in line for line in lines)


def _points_with(project, tmp_path, **change):
    table = read_table("points", project["points"]).to_pylist()
    table[7].update(change)
    path = tmp_path / "points.parquet"
    write_table("points", pa.Table.from_pylist(table, schema=read_table("points", project["points"]).schema), path)
    return path, table[7]["image_id"]


def test_point_outside_image_names_row_and_image(project, tmp_path):
    path, image_id = _points_with(project, tmp_path, x=5000.0)
    with pytest.raises(pseudomasks.PseudomaskError) as err:
        pseudomasks.run(path, project["manifest"], tmp_path / "pm", log=lambda _: None)
    message = str(err.value)
    assert "row 7" in message and image_id in message and "x=5000" in message and "outside" in message
    assert not (tmp_path / "pm").exists()


def test_unknown_image_and_duplicates(project, tmp_path):
    path, _ = _points_with(project, tmp_path, image_id="f" * 32)
    with pytest.raises(pseudomasks.PseudomaskError, match=r"row 7: image_id f{32} is not in the manifest"):
        pseudomasks.run(path, project["manifest"], tmp_path / "pm", log=lambda _: None)
    table = read_table("points", project["points"])
    doubled = pa.concat_tables([table, table])
    write_table("points", doubled, tmp_path / "doubled.parquet")
    a = pseudomasks.run(tmp_path / "doubled.parquet", project["manifest"], tmp_path / "a", log=lambda _: None)
    b = pseudomasks.run(project["points"], project["manifest"], tmp_path / "b", log=lambda _: None)
    assert a.points == b.points == project["n_points"]  # duplicate points collapse
    for row in read_table("pseudomask_index", tmp_path / "a" / "index.parquet").to_pylist():  # deterministic
        for key in ("semantic_path", "instances_path"):
            a_mask, b_mask = read_labels(tmp_path / "a" / row[key]), read_labels(tmp_path / "b" / row[key])
            np.testing.assert_array_equal(a_mask, b_mask)


def test_cli_runs_and_reports_errors(project, tmp_path, repo_root):
    runner = CliRunner()
    args = ["pseudomasks", "--points", str(project["points"]), "--manifest", str(project["manifest"]),
            "--params", str(repo_root / "params.yaml"), "--method", "voronoi"]
    ok = runner.invoke(app, [*args, "--out", str(tmp_path / "pm")])
    assert ok.exit_code == 0, ok.output
    assert set(read_table("pseudomask_index", tmp_path / "pm" / "index.parquet").column("method").to_pylist()) == {
        "voronoi"}
    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "x"), "--method", "blobs"])
    assert bad.exit_code == 1 and "unknown method 'blobs'" in bad.output
    missing = runner.invoke(app, ["pseudomasks", "--points", str(tmp_path / "none.parquet"),
                                  "--manifest", str(project["manifest"]), "--out", str(tmp_path / "y")])
    assert missing.exit_code == 1 and "points table not found" in missing.output


@pytest.mark.slow
def test_dvc_repro_pseudomasks_stage(repo_root, tmp_path):
    """The real dvc.yaml stage: sample data -> ingest -> (GT points as the clicks) -> pseudomasks, then a no-op."""
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
    shutil.copyfile(repo / "storage/sample/points.parquet", repo / "storage/points.parquet")  # simulated clicks
    out = sh(sys.executable, "-m", "dvc", "repro", "pseudomasks")
    assert "Running stage 'pseudomasks'" in out.stdout
    index = read_table("pseudomask_index", repo / "storage/pseudomasks/index.parquet")
    assert index.num_rows == 49
    qc = json.loads((repo / "storage/pseudomask_qc.json").read_text())
    assert len(qc["gold"]) == 3 and qc["gold_mean_labeled_dice"] >= qc["min_gold_dice"]
    again = sh(sys.executable, "-m", "dvc", "repro", "pseudomasks")
    assert "Running stage" not in again.stdout
