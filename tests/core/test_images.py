import numpy as np
import pytest
import tifffile
from PIL import Image

from nucleate.io import ImageError, content_id, read_image, read_labels, write_image, write_labels

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
