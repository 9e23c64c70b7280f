import numpy as np
import pytest
import tifffile
from PIL import Image

from nucleate.io import ImageError, content_id, find_labels, images, read_image, read_labels, write_image, write_labels
from nucleate.io.images import STRETCH_PERCENTILES, percentile_stretch

RNG = np.random.default_rng(0)
GRAY8 = RNG.integers(0, 256, (40, 70), dtype=np.uint8)
GRAY16 = RNG.integers(0, 65536, (40, 70), dtype=np.uint16)
RGB8 = RNG.integers(0, 256, (40, 70, 3), dtype=np.uint8)
RGB16 = RNG.integers(0, 65536, (40, 70, 3), dtype=np.uint16)


@pytest.mark.parametrize(
    ("name", "array"),
    [("g8.png", GRAY8), ("g16.png", GRAY16), ("rgb.png", RGB8), ("g8.tif", GRAY8), ("g16.tiff", GRAY16),
     ("rgb8.tif", RGB8), ("rgb16.tif", RGB16)],
)
def test_lossless_round_trip(tmp_path, name, array):
    write_image(tmp_path / name, array)
    back = read_image(tmp_path / name)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_jpeg_round_trip_is_close(tmp_path):
    smooth = np.tile(np.linspace(0, 255, 70, dtype=np.uint8), (40, 1))
    write_image(tmp_path / "a.jpg", smooth)
    back = read_image(tmp_path / "a.jpg")
    assert back.shape == smooth.shape and np.abs(back.astype(int) - smooth).mean() < 2


def test_rgba_drops_alpha_and_planar_tiff_is_rgb(tmp_path):
    Image.fromarray(np.dstack([RGB8, np.full((40, 70), 9, np.uint8)])).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), RGB8)
    tifffile.imwrite(tmp_path / "p.tif", np.moveaxis(RGB8, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "p.tif"), RGB8)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_bytes(b"not an image at all"), "not a readable image"),
        (lambda p: tifffile.imwrite(p.with_suffix(".tif"), np.zeros((3, 8, 8, 2), np.uint8)), None),
    ],
)
def test_bad_files(tmp_path, setup, message):
    path = tmp_path / "x.png"
    setup(path)
    if message is None:
        path = path.with_suffix(".tif")
        message = "multi-page TIFF"
    with pytest.raises(ImageError, match=message) as err:
        read_image(path)
    assert str(err.value).startswith(str(path))


def test_truncated_png_and_tiff(tmp_path):
    for name in ("a.png", "a.tif"):
        write_image(tmp_path / name, GRAY16 if name.endswith("tif") else RGB8)
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageError, match="truncated"):
            read_image(tmp_path / f"cut_{name}")


def test_multipage_and_float_rejected_with_advice(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 8, 8), np.uint16))
    with pytest.raises(ImageError, match=r"multi-page TIFF \(5 pages\).*own file"):
        read_image(tmp_path / "stack.tif")
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((8, 8), np.float32))
    with pytest.raises(ImageError, match="unsupported pixel type float32.*uint8/uint16"):
        read_image(tmp_path / "f.tif")
    with pytest.raises(ImageError, match="unsupported file type '.bmp'"):
        read_image(tmp_path / "x.bmp")


def test_labels_round_trip(tmp_path):
    labels = RNG.integers(0, 5000, (30, 20), dtype=np.int32)
    write_labels(tmp_path / "l.tif", labels)
    np.testing.assert_array_equal(read_labels(tmp_path / "l.tif"), labels)
    sem = RNG.choice(np.array([0, 1, 255], np.uint8), (30, 20))
    write_labels(tmp_path / "s.png", sem)
    np.testing.assert_array_equal(read_labels(tmp_path / "s.png"), sem)


def test_content_id_depends_on_bytes_only(tmp_path):
    write_image(tmp_path / "a.png", GRAY8)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.png").write_bytes((tmp_path / "a.png").read_bytes())
    assert content_id(tmp_path / "a.png") == content_id(tmp_path / "sub" / "b.png")
    assert len(content_id(tmp_path / "a.png")) == 32
    write_image(tmp_path / "c.png", GRAY8 + 1)
    assert content_id(tmp_path / "c.png") != content_id(tmp_path / "a.png")


# ------------------------------------------------------------------ percentile_stretch: the one contrast stretch


def test_stretch_maps_the_percentiles_to_0_and_255_hand_computed():
    gray = np.arange(0, 1001, dtype=np.uint16).reshape(7, 143)  # 0..1000; the 10th / 90th percentiles: 100, 900
    out = percentile_stretch(gray, (10.0, 90.0))
    assert out.dtype == np.uint8 and out.shape == gray.shape
    flat = out.ravel()
    assert (flat[:101] == 0).all() and (flat[900:] == 255).all()  # clipped tails
    assert flat[400] == 96 and flat[300] == 64  # (400-100)/800*255 = 95.625 -> 96, 63.75 -> 64
    unit = percentile_stretch(gray, (10.0, 90.0), dtype=np.float32)
    assert unit.dtype == np.float32 and unit.min() == 0.0 and unit.max() == 1.0
    assert unit.ravel()[500] == 0.5
    assert np.abs(unit * 255 - out).max() <= 0.5 + 1e-4  # the same stretch, rounded (ties may go either way)


def test_uint8_colour_passes_unchanged_but_uint8_gray_is_stretched():
    assert percentile_stretch(RGB8) is not None and np.array_equal(percentile_stretch(RGB8), RGB8)
    np.testing.assert_array_equal(percentile_stretch(RGB8, dtype=np.float32), RGB8 / np.float32(255))
    dim = RNG.integers(10, 40, (32, 32), dtype=np.uint8)
    out = percentile_stretch(dim, (0.0, 100.0))
    assert out.min() == 0 and out.max() == 255


def test_colour_images_share_one_range_so_ratios_survive():
    rgb = np.zeros((10, 10, 3), np.uint16)
    rgb[..., 0], rgb[..., 1] = 1000, 500
    assert percentile_stretch(rgb, (0.0, 100.0))[0, 0].tolist() == [255, 128, 0]


def test_near_constant_image_falls_back_to_min_and_max():
    img = np.full((40, 50), 100, np.uint16)  # 2000 pixels; both default percentiles are 100
    img[0, 0], img[0, 1] = 200, 140
    out = percentile_stretch(img)
    assert (out[0, 0], out[0, 1], out[5, 5]) == (255, 102, 0)  # (140-100)/100*255 = 102


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_constant_or_all_non_finite_image_is_zero(dtype):
    for image in (np.full((6, 5), 700, np.uint16), np.full((3, 3), 7.0), np.full((2, 2), np.nan)):
        out = percentile_stretch(image, dtype=dtype)
        assert out.dtype == dtype and out.shape == image.shape and not out.any()


def test_non_finite_pixels_never_set_the_range():
    img = np.array([[0.0, 10.0, np.nan], [np.inf, -np.inf, 4.0]])
    out = percentile_stretch(img, (0.0, 100.0))
    assert out.tolist() == [[0, 255, 0], [255, 0, 102]]  # range 0..10 from the finite pixels only


def test_sample_pixels_set_the_range():
    img = np.array([[0, 40, 100, 1000]], np.uint16)
    out = percentile_stretch(img, (0.0, 100.0), sample=np.array([0, 2]))  # range 0..100
    assert out.tolist() == [[0, 102, 255, 255]]


def test_row_blocks_give_the_same_answer(monkeypatch):
    img = RNG.normal(100, 30, (37, 23, 3)).astype(np.float32)
    whole = percentile_stretch(img, (1.0, 99.0))
    monkeypatch.setattr(images, "_STRETCH_CHUNK", 23 * 3 * 4)  # 4 rows per block
    np.testing.assert_array_equal(percentile_stretch(img, (1.0, 99.0)), whole)
    lo, hi = np.percentile(img.astype(np.float64), [1.0, 99.0])
    expected = np.rint(np.clip((img.astype(np.float64) - lo) * (255.0 / (hi - lo)), 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(whole, expected)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"image": np.zeros((0, 4), np.uint16)}, "no pixels"),
    ({"image": np.zeros((3, 3), bool)}, "pixel type bool"),
    ({"image": np.zeros((2, 2, 2, 2))}, "shape"),
    ({"image": GRAY16, "percentiles": (50.0, 50.0)}, "0 <= low < high <= 100"),
    ({"image": GRAY16, "percentiles": (-1.0, 50.0)}, "0 <= low < high <= 100"),
    ({"image": GRAY16, "dtype": np.float64}, "dtype must be"),
])
def test_stretch_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        percentile_stretch(**kwargs)


def test_default_percentiles():
    assert STRETCH_PERCENTILES == (0.5, 99.5)


def test_find_labels_mirrors_the_image_path_with_label_suffixes(tmp_path):
    labels = np.zeros((4, 4), np.int32)
    write_labels(tmp_path / "gold" / "a.tif", labels)
    write_labels(tmp_path / "gold" / "b.png", labels.astype(np.uint8))
    assert find_labels(tmp_path, "gold/a.png") == tmp_path / "gold" / "a.tif"
    assert find_labels(tmp_path, "gold/a.tif") == tmp_path / "gold" / "a.tif"
    assert find_labels(tmp_path, "gold/b.jpg") == tmp_path / "gold" / "b.png"
    assert find_labels(tmp_path, "gold/c.tif") is None and find_labels(tmp_path, "test/a.tif") is None
