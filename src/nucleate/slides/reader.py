"""Opening a slide: pyramid levels, level-0 resolution, bounded region reads.

Aperio SVS and pyramidal TIFF are read with ``tiffslide`` (a dependency). Vendor formats that tiffslide cannot
read (:data:`OPENSLIDE_FORMATS`: MIRAX, Hamamatsu VMS, Leica SCN, ...) are read with OpenSlide when the optional
extra is installed (``pip install 'nucleate[openslide]'``), behind the same :class:`Slide` interface.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

__all__ = ["OPENSLIDE_FORMATS", "SLIDE_SUFFIXES", "Slide", "SlideError", "is_slide_file", "open_slide",
           "openslide_available"]

#: vendor formats that tiffslide cannot read (openslide can): file suffix -> format name
OPENSLIDE_FORMATS = {
    ".mrxs": "MIRAX",
    ".vms": "Hamamatsu VMS",
    ".vmu": "Hamamatsu VMU",
    ".scn": "Leica SCN",
    ".bif": "Ventana BIF",
    ".svslide": "Sakura SVSlide",
}
OPENSLIDE_ONLY = tuple(OPENSLIDE_FORMATS)
EXTRA_HINT = "pip install 'nucleate[openslide]'"
BACKENDS = ("auto", "tiffslide", "openslide")
#: suffixes of whole-slide files (any case); a ``.tif`` / ``.tiff`` is a slide when :func:`is_slide_file` says so
SLIDE_SUFFIXES = (".svs", ".ndpi", ".tf2", ".tf8", ".btf", *OPENSLIDE_ONLY)


class SlideError(ValueError):
    """A slide that cannot be used; the message is one line and names the file."""


class Slide:
    """An open whole-slide image.

    Attributes:
        path: the file.
        slide_id: identifier used in tile rows (default: the file name without suffix).
        level_dimensions: ``(width, height)`` per level, px at that level; level 0 = full resolution.
        level_downsamples: level-0 px per level px, per level (1.0 for level 0).
        mpp: ``(x, y)`` level-0 micrometres per pixel (from metadata, or the ``mpp`` given to :func:`open_slide`).
        backend: ``"tiffslide"`` or ``"openslide"``, the library that reads the pixels.
    """

    def __init__(self, handle, path: Path, slide_id: str, mpp: tuple[float, float], backend: str = "tiffslide"):
        self._handle = handle
        self.backend = backend
        self.path = path
        self.slide_id = slide_id
        self.mpp = mpp
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple((int(w), int(h)) for w, h in handle.level_dimensions)
        self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in handle.level_downsamples)

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)`` in px."""
        return self.level_dimensions[0]

    def level_scale(self, level: int) -> tuple[float, float]:
        """Level-0 px per level px along ``(x, y)`` from the level's real size (exact, unlike rounded downsamples)."""
        w0, h0 = self.dimensions
        w, h = self.level_dimensions[level]
        return w0 / w, h0 / h

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Pixels ``[y, y + height) x [x, x + width)`` *in level px* of ``level`` as uint8 RGB ``(height, width, 3)``.

        Parts outside the level are white (background). Unreadable data raises :class:`SlideError`.
        """
        out = np.full((height, width, 3), 255, np.uint8)
        lw, lh = self.level_dimensions[level]
        x1, y1 = max(x, 0), max(y, 0)
        x2, y2 = min(x + width, lw), min(y + height, lh)
        if x2 <= x1 or y2 <= y1:
            return out
        ds = float(self._handle.level_downsamples[level])
        if self.backend == "openslide":  # openslide reads at location / ds (exact where that is a whole number)
            location = (round(x1 * ds), round(y1 * ds))
        else:  # tiffslide maps location -> int(location / ds)
            location = (level0_location(x1, ds), level0_location(y1, ds))
        try:
            region = self._handle.read_region(location, level, (x2 - x1, y2 - y1), as_array=True)
        except Exception as exc:  # noqa: BLE001 - codec / IO errors of every kind become one line
            raise SlideError(f"{self.path}: cannot read level {level} (truncated or corrupt file?): {exc}") from None
        region = np.asarray(region)
        if region.dtype != np.uint8:
            raise SlideError(f"{self.path}: unsupported pixel type {region.dtype} (8-bit RGB or gray slides only)")
        out[y1 - y : y2 - y, x1 - x : x2 - x] = _rgb(region)
        return out

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_slide(
    path: str | Path,
    *,
    mpp: float | tuple[float, float] | None = None,
    slide_id: str | None = None,
    backend: str = "auto",
    default_mpp: float | None = None,
) -> Slide:
    """Open a whole-slide image.

    Args:
        path: the slide file.
        mpp: level-0 µm per px, ``float`` or ``(x, y)``; overrides the file's metadata.
        default_mpp: level-0 µm per px used only when the file has no resolution metadata (params
            ``slides.slide_mpp``); the file's metadata wins where it has some.
        slide_id: id written into tile rows; default the file name without suffix.
        backend: ``"auto"`` (tiffslide for TIFF-based files, openslide for :data:`OPENSLIDE_FORMATS` and other
            non-TIFF files), or force ``"tiffslide"`` / ``"openslide"``.

    Raises:
        SlideError: one line naming the file: missing file, unsupported format (or a vendor format without the
            openslide extra), truncated / unreadable file, or no resolution metadata and no ``mpp``.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise SlideError(f"{path}: unknown slide backend {backend!r} (one of {', '.join(BACKENDS)})")
    if not path.is_file():
        raise SlideError(f"{path}: no such slide file")
    if backend == "auto":
        backend = "openslide" if path.suffix.lower() in OPENSLIDE_FORMATS or not _is_tiff(path) else "tiffslide"
    handle, meta_mpp = _open_openslide(path) if backend == "openslide" else _open_tiffslide(path)
    try:
        if mpp is None:
            resolution = meta_mpp
            if resolution is None and default_mpp is not None:
                resolution = (float(default_mpp), float(default_mpp))
            if resolution is None:
                raise SlideError(
                    f"{path}: the slide has no resolution metadata (µm per pixel); set slides.slide_mpp in "
                    "params.yaml to its level-0 resolution (e.g. 0.25 for 40x, 0.5 for 20x)"
                )
        else:
            resolution = (float(mpp), float(mpp)) if np.isscalar(mpp) else (float(mpp[0]), float(mpp[1]))
        if not all(np.isfinite(r) and r > 0 for r in resolution):
            raise SlideError(f"{path}: resolution must be a positive number of µm per pixel, got {resolution}")
    except SlideError:
        handle.close()
        raise
    return Slide(handle, path, path.stem if slide_id is None else slide_id, resolution, backend)


def openslide_available() -> bool:
    """The optional ``openslide`` extra (openslide-python + its library) imports."""
    try:
        import openslide  # noqa: F401
    except (ImportError, OSError):  # OSError: the Python package without the shared library
        return False
    return True


def _format_name(path: Path) -> str:
    return OPENSLIDE_FORMATS.get(path.suffix.lower(), f"{path.suffix or 'suffix-less'} file, not TIFF")


def _open_tiffslide(path: Path) -> tuple[object, tuple[float, float] | None]:
    """A ``tiffslide.TiffSlide`` and its level-0 µm/px from metadata (None when absent)."""
    import tiffslide

    if not _is_tiff(path):
        raise SlideError(f"{path}: not a TIFF file, so tiffslide cannot read it (Aperio SVS and pyramidal TIFF only)")
    tifffile_log = logging.getLogger("tifffile")  # its warnings about a broken file: our one line says it
    level = tifffile_log.level
    tifffile_log.setLevel(logging.CRITICAL)
    try:
        handle = tiffslide.TiffSlide(path)
    except Exception as exc:  # noqa: BLE001 - codec / IO errors of every kind become one line
        raise SlideError(f"{path}: cannot read the slide (truncated or corrupt file?): {exc}") from None
    else:
        try:
            _check_complete(handle, path)
            props = handle.properties
        except SlideError:
            handle.close()
            raise
        except Exception as exc:  # noqa: BLE001 - a header pointing past the end, a broken IFD...: one line
            handle.close()
            raise SlideError(f"{path}: cannot read the slide (truncated or corrupt file?): {type(exc).__name__}: "
                             f"{exc}") from None
    finally:
        tifffile_log.setLevel(level)
    mx, my = props.get("tiffslide.mpp-x"), props.get("tiffslide.mpp-y")
    return handle, ((float(mx), float(my)) if mx and my else None)


def _open_openslide(path: Path) -> tuple[_OpenSlideHandle, tuple[float, float] | None]:
    """An OpenSlide behind :class:`_OpenSlideHandle` and its level-0 µm/px from metadata (None when absent)."""
    if not openslide_available():
        if path.suffix.lower() in OPENSLIDE_FORMATS:
            raise SlideError(f"{path}: {_format_name(path)} slides need the openslide extra: {EXTRA_HINT}")
        raise SlideError(f"{path}: not a TIFF-based slide (tiffslide reads Aperio SVS and pyramidal TIFF); other "
                         f"vendor formats need the openslide extra: {EXTRA_HINT}")
    import openslide

    if openslide.OpenSlide.detect_format(str(path)) is None:
        raise SlideError(f"{path}: unsupported slide format ({_format_name(path)}): neither tiffslide nor openslide "
                         "can read it")
    try:
        osr = openslide.OpenSlide(str(path))
    except Exception as exc:  # noqa: BLE001
        raise SlideError(f"{path}: cannot read the slide with openslide (truncated or corrupt file?): {exc}") from None
    mx, my = osr.properties.get("openslide.mpp-x"), osr.properties.get("openslide.mpp-y")
    return _OpenSlideHandle(osr), ((float(mx), float(my)) if mx and my else None)


class _OpenSlideHandle:
    """An ``openslide.OpenSlide`` behind tiffslide's calls that :class:`Slide` makes (RGB on white)."""

    def __init__(self, osr):
        self._osr = osr
        self.level_dimensions = osr.level_dimensions
        self.level_downsamples = osr.level_downsamples

    def read_region(self, location, level, size, as_array=True) -> np.ndarray:
        rgba = np.asarray(self._osr.read_region(location, level, size))  # (h, w, 4), not premultiplied
        alpha = rgba[..., 3:4].astype(np.float32) / 255.0
        rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)  # no data (alpha 0) -> white
        return np.clip(np.round(rgb), 0, 255).astype(np.uint8)

    def close(self) -> None:
        self._osr.close()


def is_slide_file(path: str | Path) -> bool:
    """Whether ``path`` is a whole-slide image: a :data:`SLIDE_SUFFIXES` file, or a TIFF holding a pyramid (reduced
    levels as SubIFDs or as further pages). Reads the TIFF's header only; an unreadable TIFF is not a slide (it fails
    later as an image, with its own message)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SLIDE_SUFFIXES:
        return True
    if suffix not in (".tif", ".tiff"):
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) == 1 and not tif.pages[0].subifds:  # one plain page (the common image): no series scan
                return False
            series = tif.series
            return bool(series) and len(series[0].levels) > 1
    except Exception:  # noqa: BLE001 - not a readable TIFF: not a slide
        return False


def level0_location(v: int, downsample: float) -> int:
    """The level-0 coordinate that tiffslide's ``read_region`` maps to level px ``v`` (``int(loc / downsample)``)."""
    loc = math.ceil(v * downsample)
    while loc > 0 and int(loc / downsample) > v:
        loc -= 1
    while int(loc / downsample) < v:
        loc += 1
    return loc


def _is_tiff(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(4)
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _check_complete(handle, path: Path) -> None:
    """Every level's tile / strip data lies inside the file (a truncated copy fails here, not mid-read)."""
    size = path.stat().st_size
    series = handle.ts_tifffile.series[handle.properties.get("tiffslide.series-index") or 0]
    for level in series.levels:
        page = level.keyframe
        offsets = np.asarray(page.dataoffsets, np.int64)
        counts = np.asarray(page.databytecounts, np.int64)
        if offsets.size and int((offsets + counts).max()) > size:
            raise SlideError(f"{path}: truncated file (image data ends past its {size} bytes)")
    if len(series.levels) != len(handle.level_dimensions):  # pragma: no cover - defensive
        raise SlideError(f"{path}: inconsistent pyramid")


def _rgb(region: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(h, w, 3)`` from a gray, RGB or RGBA region."""
    if region.ndim == 2:
        region = region[..., None]
    if region.shape[-1] == 1:
        region = np.repeat(region, 3, axis=-1)
    return region[..., :3]
