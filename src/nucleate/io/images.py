"""Image and label-image files: PNG, TIFF and JPEG in, atomic writes out.

Pixel arrays are indexed (row, col) = (y, x):

* images: ``(H, W)`` gray or ``(H, W, 3)`` RGB, ``uint8`` or ``uint16``. RGBA / gray+alpha drop the
  alpha channel, palette and 1-bit images become 8-bit. Multi-page TIFFs and animated PNGs are
  rejected (one image per file). Other dtypes (float, int32...) are rejected with advice.
* label images (instance masks): ``(H, W)`` ``int32`` TIFF, 0 = background, 1..N = instances;
  ``uint8`` semantic masks (0 bg, 1 nucleus, 255 ignore) are written as PNG or TIFF.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from nucleate.io.atomic import atomic_path

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageError",
    "content_id",
    "read_image",
    "write_image",
    "read_labels",
    "write_labels",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
_TIFF = (".tif", ".tiff")
_CHUNK = 1 << 20


class ImageError(ValueError):
    """An image file cannot be used; the message starts with the path and says why and what to do."""


def content_id(path: str | Path) -> str:
    """Content hash of a file's bytes: 32 hex characters (BLAKE2b-128), read in 1 MiB chunks.

    Two files with identical bytes get the same id wherever they live; this is ``image_id``.
    """
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file fully into ``(H, W)`` or ``(H, W, 3)`` ``uint8``/``uint16``.

    Raises :class:`ImageError` (message: ``<path>: <reason>``) for empty, truncated, corrupt,
    multi-page, unsupported-dtype or unsupported-format files.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageError(f"{path}: unsupported file type '{suffix}'; use one of {', '.join(IMAGE_SUFFIXES)}")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror})") from None
    if size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    array = _read_tiff(path) if suffix in _TIFF else _read_pillow(path)
    return _conform(path, array)


def _read_tiff(path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # tifffile warns (instead of raising) on truncated data
            with tifffile.TiffFile(path) as tif:
                pages = len(tif.pages)
                if pages != 1:
                    raise ImageError(
                        f"{path}: multi-page TIFF ({pages} pages); nucleate takes one 2-D image per file "
                        "- save each page (or a max projection) as its own file"
                    )
                page = tif.pages[0]
                array = page.asarray()
                if array.ndim == 3 and page.planarconfig == tifffile.PLANARCONFIG.SEPARATE:
                    array = np.moveaxis(array, 0, -1)  # planar (C, H, W) -> (H, W, C)
                return array
    except ImageError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt data
        raise ImageError(f"{path}: corrupt or truncated TIFF ({type(exc).__name__}: {exc})") from None


def _read_pillow(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            frames = getattr(img, "n_frames", 1)
            if frames != 1:
                raise ImageError(f"{path}: animated image with {frames} frames; save one frame per file")
            img.load()
            mode = img.mode
            if mode in ("RGBA", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGB")
            elif mode in ("LA", "La", "1"):
                img = img.convert("L")
            array = np.asarray(img)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: corrupt or truncated image ({exc})") from None
    if mode in ("I", "I;16", "I;16B", "I;16L") and array.dtype != np.uint16:
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ImageError(f"{path}: 32-bit integer PNG with values outside 0..65535; save as 16-bit")
        array = array.astype(np.uint16)
    return array


def _conform(path: Path, array: np.ndarray) -> np.ndarray:
    if array.size == 0:
        raise ImageError(f"{path}: image has no pixels (shape {array.shape})")
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    elif array.ndim == 3 and array.shape[-1] == 2:  # gray + alpha
        array = array[..., 0]
    elif array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        raise ImageError(
            f"{path}: unsupported shape {array.shape}; expected (H, W) gray or (H, W, 3) RGB "
            "- for a stack or multi-channel file, save the nuclear channel as its own image"
        )
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype not in (np.uint8, np.uint16):
        raise ImageError(
            f"{path}: unsupported pixel type {array.dtype}; expected 8- or 16-bit unsigned integers "
            "- rescale and save as uint8/uint16"
        )
    return np.ascontiguousarray(array)


def write_image(path: str | Path, array: np.ndarray) -> None:
    """Write a ``uint8``/``uint16`` gray or RGB image atomically; the format follows the suffix.

    TIFF is zlib-compressed. PNG takes uint8 gray/RGB and uint16 gray; JPEG takes uint8 only (lossy).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    array = np.asarray(array)
    if array.dtype not in (np.uint8, np.uint16) or not (
        array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)
    ):
        raise ValueError(f"{path}: cannot write image of dtype {array.dtype} and shape {array.shape}")
    if suffix in _TIFF:
        photometric = "rgb" if array.ndim == 3 else "minisblack"
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, array, photometric=photometric, compression="zlib")
        return
    if suffix not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"{path}: unsupported image suffix '{suffix}'")
    if array.dtype == np.uint16 and (array.ndim == 3 or suffix != ".png"):
        raise ValueError(f"{path}: 16-bit {'RGB ' if array.ndim == 3 else ''}images must be written as TIFF")
    img = Image.fromarray(array)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG" if suffix == ".png" else "JPEG", **({"quality": 95} if suffix != ".png" else {}))


def read_labels(path: str | Path) -> np.ndarray:
    """Read a label image (TIFF or PNG) as ``(H, W)`` ``int32``; raises :class:`ImageError`."""
    path = Path(path)
    array = _read_tiff(path) if path.suffix.lower() in _TIFF else _read_pillow(path)
    if array.ndim != 2 or array.dtype.kind not in "iu":
        raise ImageError(f"{path}: label image must be 2-D integer, got {array.dtype} {array.shape}")
    return array.astype(np.int32, copy=False)


def write_labels(path: str | Path, labels: np.ndarray) -> None:
    """Write a 2-D label image atomically: ``int32`` instances as zlib TIFF, ``uint8`` as TIFF or PNG."""
    path = Path(path)
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype not in (np.int32, np.uint8):
        raise ValueError(f"{path}: labels must be 2-D int32 or uint8, got {labels.dtype} {labels.shape}")
    if path.suffix.lower() in _TIFF:
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, labels, photometric="minisblack", compression="zlib")
    elif path.suffix.lower() == ".png" and labels.dtype == np.uint8:
        with atomic_path(path) as tmp:
            Image.fromarray(labels).save(tmp, format="PNG")
    else:
        raise ValueError(f"{path}: write int32 labels as .tif; uint8 as .tif or .png")
