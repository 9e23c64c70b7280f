"""Image and label-image files: PNG, TIFF and JPEG in, atomic writes out.

Pixel arrays are indexed (row, col) = (y, x):

* images: ``(H, W)`` gray or ``(H, W, 3)`` RGB, ``uint8`` or ``uint16``. RGBA / gray+alpha drop the
  alpha channel, palette and 1-bit images become 8-bit. Multi-page TIFFs and animated PNGs are
  rejected (one image per file). Other dtypes (float, int32...) are rejected with advice.
* label images (instance masks): ``(H, W)`` ``int32`` TIFF, 0 = background, 1..N = instances;
  ``uint8`` semantic masks (0 bg, 1 nucleus, 255 ignore) are written as PNG or TIFF.

:func:`percentile_stretch` is the one contrast stretch of the project (annotator display PNGs, the
teacher's 8-bit input, intensity features): clip to an image's [low, high] percentiles and rescale.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from nucleate.io.atomic import atomic_path

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageError",
    "content_id",
    "image_files",
    "read_image",
    "write_image",
    "read_labels",
    "write_labels",
    "LABEL_SUFFIXES",
    "find_labels",
    "STRETCH_PERCENTILES",
    "percentile_stretch",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
#: suffixes :func:`find_labels` tries for the label image of an image (after the image's own name)
LABEL_SUFFIXES = (".tif", ".tiff", ".png")
_TIFF = (".tif", ".tiff")
_CHUNK = 1 << 20
#: default [low, high] percentiles of :func:`percentile_stretch` (display PNGs, intensity features)
STRETCH_PERCENTILES = (0.5, 99.5)
_STRETCH_CHUNK = 1 << 20  # values per float64 block in percentile_stretch (8 MiB)


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


def image_files(root: str | Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> Iterator[Path]:
    """Files under ``root`` (recursive) with a suffix in ``suffixes`` (lower case; files match in any case), in a
    deterministic order (sorted names, folder by folder); hidden files and folders are skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and Path(name).suffix.lower() in suffixes:
                yield Path(dirpath) / name


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


def find_labels(folder: str | Path, rel: str | Path) -> Path | None:
    """The label image under ``folder`` that mirrors image path ``rel`` (relative to its image folder), or None.

    Tries ``folder/rel`` itself, then ``rel`` with each of :data:`LABEL_SUFFIXES` (``gold/a.jpg`` ->
    ``gold/a.tif``, ``gold/a.tiff``, ``gold/a.png``): how ground-truth masks and predictions are laid out.
    """
    base = Path(folder) / rel
    for candidate in (base, *(base.with_suffix(s) for s in LABEL_SUFFIXES)):
        if candidate.is_file():
            return candidate
    return None


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


def percentile_stretch(
    image: np.ndarray,
    percentiles: tuple[float, float] = STRETCH_PERCENTILES,
    *,
    dtype: type[np.uint8] | type[np.float32] = np.uint8,
    sample: np.ndarray | None = None,
) -> np.ndarray:
    """Clip ``image`` to its [low, high] ``percentiles`` and rescale linearly: the one contrast stretch.

    ``image``: ``(H, W)`` or ``(H, W, C)``, any integer or float dtype. Returns the same shape as ``dtype``:
    ``float32`` (0..1) or ``uint8`` (the same stretch onto 0..255, rounded half to even). The rule, edge
    cases included:

    * **uint8 colour passes unchanged**: a ``uint8`` ``(H, W, C)`` image (brightfield / H&E RGB, already
      meant for display) is returned as is (``uint8``) or divided by 255 (``float32``). Everything else
      (every gray image, 8-bit included, and every 16-bit or float image) is stretched as follows.
    * **range**: ``lo``, ``hi`` = the ``low`` and ``high`` percentiles (numpy's linear interpolation) of the
      finite values of all channels together (colour ratios survive); of the pixels ``sample`` only when given
      (flat row-major pixel indices into ``H * W``, for a cheaper estimate on large images).
    * **near-constant image** (``hi == lo``, e.g. > 99 % of the pixels share one value): ``lo``, ``hi`` =
      the finite minimum and maximum instead, so a few bright nuclei on a flat background still show.
    * **constant image, or no finite value**: all zeros.
    * **stretch**: ``(x - lo) / (hi - lo)`` clipped to [0, 1], computed in float64 on blocks of rows (extra
      memory: 8 MiB plus the result). Non-finite pixels never set the range; NaN and -inf map to 0, +inf
      to 1 (255).

    Raises ``ValueError`` for another shape, an empty or boolean image, or percentiles outside
    ``0 <= low < high <= 100``.
    """
    image = np.asarray(image)
    low, high = (float(p) for p in percentiles)
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got ({low}, {high})")
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {image.shape}")
    if image.size == 0:
        raise ValueError(f"image has no pixels (shape {image.shape})")
    if image.dtype == bool or image.dtype.kind not in "uif":
        raise ValueError(f"unsupported pixel type {image.dtype}; expected integers or floats")
    if dtype not in (np.uint8, np.float32):
        raise ValueError(f"dtype must be numpy.uint8 or numpy.float32, got {dtype!r}")
    if image.dtype == np.uint8 and image.ndim == 3:
        if dtype is np.uint8:
            return np.ascontiguousarray(image)
        return image.astype(np.float32) / np.float32(255.0)

    pixels = image.reshape(image.shape[0] * image.shape[1], -1)
    values = pixels if sample is None else pixels[np.asarray(sample)]
    floating = image.dtype.kind == "f"
    if floating:
        values = values[np.isfinite(values)]
    lo = hi = 0.0
    if values.size:
        lo, hi = (float(v) for v in np.percentile(values, [low, high]))
        if not hi > lo:
            lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return np.zeros(image.shape, dtype)

    top = 255.0 if dtype is np.uint8 else 1.0
    scale = top / (hi - lo)
    out = np.empty(image.shape, dtype)
    step = max(1, _STRETCH_CHUNK // max(1, pixels.shape[1] * image.shape[1]))
    for start in range(0, image.shape[0], step):  # float64 arithmetic on row blocks: bounded extra memory
        block = image[start:start + step].astype(np.float64)
        if floating:
            np.nan_to_num(block, copy=False, nan=lo, posinf=hi, neginf=lo)
        block -= lo
        block *= scale
        np.clip(block, 0.0, top, out=block)
        out[start:start + step] = np.rint(block, out=block) if dtype is np.uint8 else block
    return out
