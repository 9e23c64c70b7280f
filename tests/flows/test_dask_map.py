"""Per-image stages on a real Dask cluster (2 worker processes on 127.0.0.1): the same outputs as in-process,
a corrupt image reported while the others are done, the CLI on a scheduler address, an unreachable scheduler
in one line with nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from typer.testing import CliRunner

from flows import dask_map
from flows.cli import app
from nucleate.config import PredictParams, PseudomaskParams, params_from_dict
from nucleate.io import content_id, read_image, read_table, table_metadata, write_image, write_table
from nucleate.models import build_student, save_model
from tasks import predict, pseudomasks, teacher
from tasks._map import DASK_ENV, SEQUENTIAL

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CORRUPT = b"II*\x00 this is not a TIFF any more"


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 single-thread worker processes on 127.0.0.1 (no dashboard), closed after the module."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(**dask_map.local_cluster_kwargs(2))
    try:
        with Client(cluster, set_as_default=False) as c:
            yield c
    finally:
        cluster.close(timeout=20)


@pytest.fixture(scope="module")
def mapper(client):
    return dask_map.DaskMapper(client, window=3)  # a small window: the bounded submission is exercised


def _tree(folder) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), Parquet files excepted (compared as tables)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix != ".parquet"}


# --- teacher ------------------------------------------------------------------------------------------------

def test_teacher_on_dask_matches_in_process_and_reports_an_unscorable_image(sample_manifest, teacher_csv, tmp_path,
                                                                            mapper, monkeypatch):
    """The ``file`` teacher (the cheapest; the chunks, the cache and the failure path are the stage's own)."""
    table, _ = sample_manifest
    extra = table.slice(0, 1).to_pylist()[0] | {"image_id": "f" * 32, "path": "pool/not-scored.tif"}
    manifest = tmp_path / "manifest.parquet"
    write_table("manifest", pa.concat_tables([table, pa.Table.from_pylist([extra], schema=table.schema)]), manifest,
                metadata=table_metadata(table))
    params = params_from_dict({"teacher": {"classes": ["nucleus", "micronucleus", "background"], "backend": "file",
                                           "model": str(teacher_csv)}}).teacher
    monkeypatch.setattr(teacher, "CHUNK_IMAGES", 8)  # several chunks = several Dask tasks
    reports, tables = {}, {}
    for name, where in (("seq", SEQUENTIAL), ("dask", mapper)):
        out = tmp_path / f"{name}.parquet"
        reports[name] = teacher.run(params, manifest=manifest, out=out, cache=tmp_path / f"cache-{name}",
                                    mapper=where)
        tables[name] = read_table("teacher_probs", out)
    assert tables["dask"].equals(tables["seq"], check_metadata=True)  # bit-identical probabilities + metadata
    assert reports["dask"].scored == reports["seq"].scored == table.num_rows > 16
    failed = table_metadata(tables["dask"])["failed"]
    assert [f["path"] for f in failed] == ["pool/not-scored.tif"] and reports["dask"].failed == reports["seq"].failed


# --- pseudomasks --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def project(sample_dir, tmp_path_factory):
    """2 gold + 2 pool sample images (copied: one gets corrupted) and their ground-truth points as the clicks."""
    root = tmp_path_factory.mktemp("pm_project")
    images = root / "images"
    rels = sorted(f"gold/{p.name}" for p in (sample_dir / "images" / "gold").glob("*.tif"))[:2]
    rels += sorted(f"pool/{p.name}" for p in (sample_dir / "images" / "pool").glob("*.tif"))[:2]
    rows = []
    for rel in rels:
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample_dir / "images" / rel, images / rel)
        pixels = read_image(images / rel)
        rows.append({"image_id": content_id(images / rel), "path": rel, "width": pixels.shape[1],
                     "height": pixels.shape[0], "channels": 1, "dtype": str(pixels.dtype),
                     "split": rel.split("/")[0], "bytes": (images / rel).stat().st_size})
    write_table("manifest", pa.Table.from_pylist(rows), root / "manifest.parquet", metadata={"root": str(images)})
    points = read_table("points", sample_dir / "points.parquet")
    points = points.filter(pc.is_in(points.column("image_id"), pa.array([r["image_id"] for r in rows])))
    write_table("points", points, root / "consensus.parquet")
    return {"root": root, "images": images, "rels": rels, "masks": sample_dir / "masks"}


def _pseudomasks(project, out, where, images=None):
    return pseudomasks.run(PseudomaskParams(), 0, points=project["root"] / "consensus.parquet",
                           manifest=project["root"] / "manifest.parquet", out=out, images=images,
                           gold_masks=project["masks"], qc=out.parent / f"{out.name}.qc.json", mapper=where)


def test_pseudomasks_on_dask_are_bit_identical_and_a_corrupt_image_is_reported(project, tmp_path, mapper):
    broken = tmp_path / "broken"
    shutil.copytree(project["images"], broken)
    (broken / project["rels"][-1]).write_bytes(CORRUPT)
    outs, reports = {}, {}
    for name, where in (("seq", SEQUENTIAL), ("dask", mapper)):
        outs[name] = tmp_path / name
        reports[name] = _pseudomasks(project, outs[name], where, images=broken)
    assert _tree(outs["dask"]) == _tree(outs["seq"]) and len(_tree(outs["seq"])) == 3 * 4  # every map, bytewise
    index = {k: read_table("pseudomask_index", v / "index.parquet") for k, v in outs.items()}
    assert index["dask"].equals(index["seq"], check_metadata=True)
    qc = {k: json.loads((v.parent / f"{v.name}.qc.json").read_text()) for k, v in outs.items()}
    assert qc["dask"] == qc["seq"] and reports["dask"].gold == reports["seq"].gold
    assert reports["dask"].lines()[0].replace(str(outs["dask"]), "OUT") == reports["seq"].lines()[0].replace(
        str(outs["seq"]), "OUT")
    assert reports["dask"].qc == reports["seq"].qc and reports["dask"].qc.startswith("passed on 2 gold image(s)")
    assert reports["dask"].images == index["dask"].num_rows == 3
    assert [f[1] for f in reports["dask"].failed] == [project["rels"][-1]] and len(qc["dask"]["failed"]) == 1
    assert ", 1 failed" in reports["dask"].lines()[0]


# --- predict ------------------------------------------------------------------------------------------------

SMALL = dict(width=8, depths=(1, 1, 1, 1), decoder_channels=(16, 16, 8, 8, 8), heatmap_channels=(8, 8, 8, 8, 4))
EXTRA = {"classes": ["nucleus", "micronucleus", "background"], "nucleus_radius_px": 10.0,
         "data_nucleus_radius_px": 10.0, "heatmap_trained": True, "supervision": "donuseg", "round": 2}
PREDICT = PredictParams(window_px=64, device="cpu")


@pytest.fixture(scope="module")
def student(tmp_path_factory, sample_dir):
    """A tiny random-weight student and a folder of 4 images (2 real sample crops, 2 synthetic) + a corrupt one."""
    torch.manual_seed(0)
    model = build_student("resnet", 3, **SMALL).eval()
    with torch.no_grad():
        model.seg_head.weight.mul_(30)
        model.heat_head.weight.mul_(30)
    root = tmp_path_factory.mktemp("student")
    save_model(root / "model", model, extra=EXTRA)
    images = root / "images"
    rng = np.random.default_rng(0)
    for k, src in enumerate(sorted((sample_dir / "images" / "pool").glob("*.tif"))[:2]):
        write_image(images / "pool" / f"s{k}.tif", read_image(src)[:96, :128])
    write_image(images / "a.png", rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))
    write_image(images / "pool" / "b.tif", rng.integers(0, 4096, (64, 64), dtype=np.uint16))
    (images / "pool" / "z.tif").write_bytes(CORRUPT)
    return root / "model", images


def _predictions(out):
    table = read_table("predicted_points", out / "points.parquet")
    return table.drop_columns(["created_at"]), {k: v for k, v in table_metadata(table).items()}


def test_predict_on_dask_is_bit_identical_and_a_corrupt_image_is_reported(student, tmp_path, mapper):
    model, images = student
    outs, reports = {}, {}
    for name, where in (("seq", SEQUENTIAL), ("dask", mapper)):
        outs[name] = tmp_path / name
        reports[name] = predict.run(PREDICT, ("nucleus",), model=model, images=images, out=outs[name], mapper=where)
    assert _tree(outs["dask"]) == _tree(outs["seq"]) and len(_tree(outs["seq"])) == 4
    seq, dask = _predictions(outs["seq"]), _predictions(outs["dask"])
    assert dask[0].equals(seq[0]) and dask[1] == seq[1] and seq[0].num_rows > 0
    assert reports["dask"].failed == reports["seq"].failed and [f["path"] for f in seq[1]["failed"]] == ["pool/z.tif"]
    assert reports["dask"].images == 4 and "4 images, 1 failed" in reports["dask"].lines()[0]


# --- the CLI: NUCLEATE_DASK ---------------------------------------------------------------------------------

def _nucleate(args, env_value, timeout=120):
    """``python -m flows.cli ARGS`` (what `dvc repro` runs, also from the round flows) with NUCLEATE_DASK set."""
    env = {**os.environ, DASK_ENV: env_value}
    return subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def test_cli_on_a_scheduler_address_and_strict(student, tmp_path, client, monkeypatch, repo_root):
    """`nucleate predict` with NUCLEATE_DASK = a running scheduler's address: the work goes to its workers."""
    model, images = student
    args = ["predict", "--params", repo_root / "params.yaml", "--model", model, "--images", images]
    result = _nucleate([*args, "--out", tmp_path / "pred"], client.scheduler.address)
    assert result.returncode == 0, result.stderr
    assert f"predict: 5 images on the Dask scheduler {client.scheduler.address} (2 worker(s))" in result.stderr
    assert "predict: 4 images, 1 failed" in result.stdout and (tmp_path / "pred" / "pool" / "b.tif").is_file()
    assert "failed " in result.stderr and "z.tif" in result.stderr  # the corrupt image, on its own line
    monkeypatch.setenv(DASK_ENV, client.scheduler.address)
    strict = CliRunner().invoke(app, [*map(str, args), "--out", str(tmp_path / "strict"), "--strict"])
    errors = [line for line in strict.output.splitlines() if line.startswith("error: ")]
    assert strict.exit_code == 1 and len(errors) == 1 and errors[0].startswith(
        "error: --strict: 1 image(s) could not be predicted (first: ") and "z.tif: " in errors[0]
    assert not (tmp_path / "strict").exists()


def _pseudomask_args(project, tmp_path, repo_root):
    return ["pseudomasks", "--params", repo_root / "params.yaml", "--points", project["root"] / "consensus.parquet",
            "--manifest", project["root"] / "manifest.parquet", "--out", tmp_path / "pm", "--qc", tmp_path / "qc.json"]


@pytest.mark.parametrize("value, message", [
    ("tcp://127.0.0.1:1", "error: Dask scheduler tcp://127.0.0.1:1 unreachable (NUCLEATE_DASK): "),
    ("locl:2", "error: NUCLEATE_DASK='locl:2': expected `local`, `local:N` (N worker processes) or a scheduler "),
])
def test_unreachable_or_malformed_setting_is_one_line_exit_1_and_writes_nothing(project, tmp_path, monkeypatch,
                                                                                repo_root, value, message):
    monkeypatch.setenv(DASK_ENV, value)
    args = ["pseudomasks", "--params", repo_root / "params.yaml", "--points", project["root"] / "consensus.parquet",
            "--manifest", project["root"] / "manifest.parquet", "--out", tmp_path / "pm", "--qc", tmp_path / "qc.json"]
    started = time.monotonic()
    result = CliRunner().invoke(app, list(map(str, args)))
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith(message), result.output
    assert time.monotonic() - started < dask_map.CONNECT_TIMEOUT_S + 5
    if value.startswith("tcp"):
        assert lines[0].endswith("start one with `dask scheduler` (and workers: `dask worker tcp://127.0.0.1:1`) "
                                 "or unset NUCLEATE_DASK")
    assert sorted(tmp_path.iterdir()) == []  # no output, no qc file, no staging folder


def test_settings_and_the_prefect_task_runner():
    assert dask_map.parse_setting("local") == dask_map.DaskSetting()
    assert dask_map.parse_setting(" local:3 ") == dask_map.DaskSetting(workers=3)
    assert dask_map.parse_setting("tcp://10.0.0.5:8786").address == "tcp://10.0.0.5:8786"
    for bad in ("local:0", "local:x", "10.0.0.5", "tcp://host"):
        with pytest.raises(dask_map.DaskUnavailable, match="expected `local`"):
            dask_map.parse_setting(bad)
    assert dask_map.task_runner("") is None
    runner = dask_map.task_runner("local:2")
    assert runner.cluster_kwargs["n_workers"] == 2 and runner.cluster_kwargs["host"] == "127.0.0.1"
    assert runner.cluster_kwargs["dashboard_address"] is None and runner.cluster_kwargs["threads_per_worker"] == 1
    assert dask_map.task_runner("tcp://10.0.0.5:8786").address == "tcp://10.0.0.5:8786"
