"""Stage predict: a saved (random-weight) student on a folder of mixed image types; bad inputs in one line each."""

import json
import shutil

import numpy as np
import pytest
import tifffile
from students import save_random_student
from typer.testing import CliRunner

from flows.cli import app
from nucleate.config import PredictParams
from nucleate.io import content_id, read_image, read_table, table_metadata, write_image
from tasks import predict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PARAMS = PredictParams(window_px=64, device="cpu")  # windows smaller than two of the images




@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_random_student(tmp_path_factory.mktemp("model") / "model", nucleus_radius_px=10.0, round=2)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """8-bit RGB PNG, 16-bit gray TIFF and 8-bit gray TIFF of odd sizes, one in a subfolder."""
    root = tmp_path_factory.mktemp("data") / "images"
    rng = np.random.default_rng(0)
    write_image(root / "a.png", rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))
    write_image(root / "pool" / "b.tif", rng.integers(0, 4096, (64, 64), dtype=np.uint16))
    write_image(root / "pool" / "c.tif", rng.integers(0, 256, (33, 101), dtype=np.uint8))
    return root


def test_writes_native_size_instances_and_a_points_table_joined_by_content_id(model_dir, images, tmp_path):
    out = tmp_path / "predictions"
    report = predict.run(PARAMS, ("nucleus", "micronucleus"), model=model_dir, images=images, out=out)
    assert report.images == 3 and report.megapixels > 0 and report.megapixels_per_s > 0
    assert report.lines()[0].startswith("predict: 3 images,")
    points = read_table("predicted_points", out / "points.parquet")
    assert set(points.column("origin").to_pylist()) <= {"prediction"}
    total = 0
    for rel in ("a.png", "pool/b.tif", "pool/c.tif"):
        labels = tifffile.imread(out / rel.replace(".png", ".tif"))
        image = read_image(images / rel)
        assert labels.dtype == np.int32 and labels.shape == image.shape[:2]
        mine = points.filter(np.array(points.column("image_id").to_pylist()) == content_id(images / rel))
        assert mine.num_rows == labels.max() == len(np.unique(labels)) - 1  # row k = instance k + 1
        x, y = mine.column("x").to_numpy(), mine.column("y").to_numpy()
        assert ((x >= 0) & (x <= labels.shape[1]) & (y >= 0) & (y <= labels.shape[0])).all()
        total += mine.num_rows
    assert total == points.num_rows == report.instances > 0
    row = points.slice(0, 1).to_pylist()[0]
    assert (row["label"], row["annotator"], row["round"], row["origin"]) == ("nucleus", "model", 2, "prediction")
    assert 0 <= row["score"] <= 1
    meta = table_metadata(points)
    assert meta["round"] == 2 and meta["markers"] == "heatmap" and meta["params"]["window_px"] == 64
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["a.tif", "b.tif", "c.tif", "points.parquet"]


def test_another_magnification_is_rescaled_and_comes_back_at_native_size(model_dir, images, tmp_path):
    out = tmp_path / "predictions"
    predict.run(PARAMS, ("nucleus",), model=model_dir, images=images, out=out, nucleus_radius_px=20.0)
    assert tifffile.imread(out / "pool" / "c.tif").shape == (33, 101)
    assert table_metadata(read_table("predicted_points", out / "points.parquet"))["nucleus_radius_px"] == 20.0


def _cli(repo_root, *args):
    result = CliRunner().invoke(app, ["predict", "--params", str(repo_root / "params.yaml"), *map(str, args)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def test_cli_bad_inputs_give_one_line_each_and_leave_the_output_alone(model_dir, images, tmp_path, repo_root):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous predictions")
    args = ("--out", out)
    line = _cli(repo_root, "--model", tmp_path / "nope", "--images", images, *args)
    assert "nope: model not found; produce it with `nucleate train`" in line
    corrupt = tmp_path / "corrupt"
    shutil.copytree(model_dir, corrupt)
    data = bytearray((corrupt / "student.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (corrupt / "student.pt").write_bytes(bytes(data))
    line = _cli(repo_root, "--model", corrupt, "--images", images, *args)
    assert "student.pt: checksum does not match student.json" in line
    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    doc = json.loads((old / "student.json").read_text())
    (old / "student.json").write_text(json.dumps({**doc, "version": 99}))
    assert "model format version 99" in _cli(repo_root, "--model", old, "--images", images, *args)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty}: no images" in _cli(repo_root, "--model", model_dir, "--images", empty, *args)
    bad = tmp_path / "bad"
    shutil.copytree(images, bad)
    tifffile.imwrite(bad / "pool" / "float.tif", np.zeros((16, 16), np.float32))
    line = _cli(repo_root, "--model", model_dir, "--images", bad, "--strict", *args)  # else: reported, others done
    assert "--strict: 1 image(s) could not be predicted" in line and "float.tif: unsupported pixel type float32" in line
    assert "--nucleus-radius-px must be" in _cli(repo_root, "--model", model_dir, "--images", images,
                                                 "--nucleus-radius-px", "big", *args)
    assert "inside the image folder" in _cli(repo_root, "--model", model_dir, "--images", images,
                                             "--out", images / "pred")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert not (images / "pred").exists()


def test_cli_runs_with_the_shipped_params(model_dir, images, tmp_path, repo_root):
    out = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", "--params", str(repo_root / "params.yaml"), "--model",
                                      str(model_dir), "--images", str(images), "--out", str(out),
                                      "--nucleus-radius-px", "estimate"])
    assert result.exit_code == 0, result.output
    assert "predict: 3 images," in result.output and (out / "points.parquet").is_file()
