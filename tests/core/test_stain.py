"""H&E stain: normalisation back to a reference, the hematoxylin channel, pseudo-H&E sample data, bad references."""

import dataclasses

import numpy as np
import pytest
from skimage.color import rgb_from_hed
from typer.testing import CliRunner

from flows.cli import app
from nucleate.config import ParamsError, StainParams, params_from_dict
from nucleate.datasets.he import pseudo_he
from nucleate.io import read_image, read_labels, read_table, write_image
from nucleate.stain import (
    BUNDLED_REFERENCE,
    StainError,
    StainTransform,
    apply_stain,
    hematoxylin,
    load_reference,
    reference_from_image,
)
from tasks import sample_data

PARAMS = StainParams()


@pytest.fixture(scope="module")
def nuclear(sample_dir) -> np.ndarray:
    """A 256 x 256 crop of a real gold image (uint8 / uint16 fluorescence nuclear channel)."""
    path = sorted((sample_dir / "images" / "gold").glob("*.tif"))[2]
    return read_image(path)[:256, :256]


@pytest.fixture(scope="module")
def he_sample(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("he") / "sample"
    sample_data.run(out=out, install=False, he=True, he_seed=0)
    return out


def _restain() -> np.ndarray:
    """rgb_from_hed with a known change: hematoxylin turned towards red and darker, eosin paler and bluer."""
    stains = np.array(rgb_from_hed, dtype=np.float64)
    stains[0] = [0.80, 0.55, 0.25]
    stains[1] = 0.8 * np.array([0.15, 0.95, 0.25])
    return stains


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_normalisation_maps_a_restained_image_back_to_the_reference(nuclear, method):
    reference_image = pseudo_he(nuclear, np.random.default_rng(0))
    other = pseudo_he(nuclear, np.random.default_rng(0), _restain())
    params = dataclasses.replace(PARAMS, normalise=method)
    transform = StainTransform(params, reference_from_image(reference_image, params, "test"))
    before = np.abs(other.astype(float) - reference_image).mean()
    after = np.abs(transform.student(other).astype(float) - reference_image).mean()
    assert before > 10  # the re-staining is a real colour change (8-bit units, mean over pixels and channels)
    assert after < 3 and after < before / 5


def test_hematoxylin_of_pseudo_he_follows_the_nuclear_channel(he_sample, sample_dir):
    for split in ("gold", "test"):
        for path in sorted((he_sample / "images" / split).glob("*.tif"))[:2]:
            rgb = read_image(path)
            assert rgb.dtype == np.uint8 and rgb.shape[-1] == 3
            source = read_image(sample_dir / "images" / split / path.name).astype(float)
            assert np.corrcoef(hematoxylin(rgb).ravel(), source.ravel())[0, 1] > 0.95


def test_pseudo_he_sample_keeps_masks_and_points(he_sample, sample_dir):
    names = sorted(p.relative_to(sample_dir / "masks") for p in (sample_dir / "masks").glob("*/*.tif"))
    assert names == sorted(p.relative_to(he_sample / "masks") for p in (he_sample / "masks").glob("*/*.tif"))
    assert len(names) == 49
    for name in names[::5]:
        assert np.array_equal(read_labels(he_sample / "masks" / name), read_labels(sample_dir / "masks" / name))
        assert read_image(he_sample / "images" / name).shape[:2] == read_labels(sample_dir / "masks" / name).shape
    fluo, he = (read_table("points", d / "points.parquet") for d in (sample_dir, he_sample))
    assert fluo.num_rows == he.num_rows == 3229
    assert fluo.select(["x", "y", "label"]).equals(he.select(["x", "y", "label"]))
    assert set(fluo.column("image_id").to_pylist()).isdisjoint(he.column("image_id").to_pylist())


def test_default_and_gray_images_pass_unchanged(nuclear):
    rgb = pseudo_he(nuclear, np.random.default_rng(1))
    assert StainTransform.from_params(PARAMS).student(rgb) is rgb
    assert apply_stain(rgb, PARAMS, None, "image") is rgb  # the default section: the same array, no copy
    assert StainTransform.from_params(PARAMS).to_extra() is None  # and nothing recorded in a model
    every = StainTransform.from_params(dataclasses.replace(PARAMS, normalise="macenko", student_input="hematoxylin"))
    assert every.student(nuclear) is nuclear  # fluorescence (gray) images are never stain-transformed
    h = every.student(rgb)
    assert h.shape == nuclear.shape and h.dtype == np.float32
    again = StainTransform.from_extra(every.to_extra())  # what predict rebuilds from the model's extra
    assert again.reference == BUNDLED_REFERENCE and np.array_equal(again.student(rgb), h)


def test_bad_reference_is_one_line(tmp_path, nuclear):
    params = dataclasses.replace(PARAMS, normalise="macenko")
    with pytest.raises(StainError, match=r"^stain.reference: .*nope.png: no such file; set stain.reference") as err:
        load_reference(tmp_path / "nope.png", params)
    assert "\n" not in str(err.value)
    write_image(tmp_path / "gray.png", (nuclear >> 8).astype(np.uint8) if nuclear.dtype == np.uint16 else nuclear)
    with pytest.raises(StainError, match=r"gray.png: a gray image has no stain colours"):
        load_reference(tmp_path / "gray.png", params)
    write_image(tmp_path / "glass.png", np.full((32, 32, 3), 250, np.uint8))
    with pytest.raises(StainError, match=r"glass.png: fewer than 100 tissue pixels"):
        load_reference(tmp_path / "glass.png", params)
    with pytest.raises(ParamsError, match=r"stain.normalise: must be one of none, macenko, reinhard"):
        params_from_dict({"stain": {"normalise": "vahadane"}})


def test_stage_with_a_bad_reference_prints_one_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("stain:\n  normalise: reinhard\n  reference: missing/ref.png\n")
    result = CliRunner().invoke(app, ["pseudomasks", "--params", str(params), "--out", str(tmp_path / "pm"),
                                      "--points", str(tmp_path / "p.parquet"), "--manifest", str(tmp_path / "m")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = [x for x in result.output.splitlines() if x.strip()]
    assert line.startswith("error: stain.reference: missing/ref.png: no such file; set stain.reference"), line
    assert not (tmp_path / "pm").exists()


def test_predict_applies_the_stain_the_model_recorded():
    """segment_image reads extra["stain"]: a model trained on the hematoxylin channel segments H&E directly."""
    import torch

    from nucleate.config import PredictParams
    from nucleate.inference import segment_image
    from tests.core.test_inference import PixelNet, _loaded, _nuclei_image

    torch.manual_seed(0)
    gray, centres, truth = _nuclei_image((120, 100), 10, 4)
    rgb = pseudo_he(gray, np.random.default_rng(0))
    transform = StainTransform.from_params(dataclasses.replace(PARAMS, student_input="hematoxylin"))
    model, params = PixelNet(nucleus_gain=20.0), PredictParams(device="cpu")
    seg = segment_image(_loaded(model, stain=transform.to_extra()), rgb, params, nucleus_radius_px=10.0)
    assert model.shapes == [(1, 1, 120, 100)]  # one channel: the hematoxylin image, not RGB
    assert seg.labels.max() == len(centres)
    assert ((seg.labels > 0) == (truth > 0)).mean() > 0.97
    plain = segment_image(_loaded(model), rgb, params, nucleus_radius_px=10.0)  # no stain recorded: RGB as is
    assert ((plain.labels > 0) == (truth > 0)).mean() < 0.9
