"""The mnfinder data set: 49 real fluorescence nuclei images with instance masks (MIT licence).

Layout inside the package folder: ``{training,validation,test}-data/<set>/images/<n>.tif`` with
``nucleus_masks/<n>.png`` beside ``images``. The masks are RGBA PNGs whose instance id is the
(G, B) pair where alpha > 0 (B alone is not unique). nucleate maps the package's splits to its own:
training -> ``pool``, validation -> ``gold``, test -> ``test``.

Some mask ids cover several separate blobs (in pool image ``2022-04-14_RPE1/5`` 19 of 39 ids hold two nuclei
each; 8 other images have one or two such ids, e.g. a nucleus and its micronucleus). A nuclei segmenter's
instances are connected objects, and a centroid of two blobs falls between them, so every 8-connected blob
becomes its own instance; a fragment smaller than ``MIN_FRAGMENT_PX`` stays with the largest blob of its id.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.measure import label as connected_components
from skimage.segmentation import relabel_sequential

from nucleate.io.images import read_image

__all__ = ["MIN_FRAGMENT_PX", "SPLIT_FOLDERS", "MnfinderImage", "iter_mnfinder", "decode_instance_mask"]

#: nucleate split -> mnfinder folder
SPLIT_FOLDERS = {"pool": "training-data", "gold": "validation-data", "test": "test-data"}
#: a separate blob of a mask id smaller than this (pixels) is a fragment of that id's nucleus, not a nucleus
MIN_FRAGMENT_PX = 10


@dataclass(frozen=True)
class MnfinderImage:
    """One image: ``name`` is unique across splits (``<set>_<n>``), arrays are (row, col)."""

    split: str
    name: str
    source: Path
    image: np.ndarray  # (H, W) uint8/uint16
    labels: np.ndarray  # (H, W) int32, 0 background, 1..N nuclei


def decode_instance_mask(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) RGBA mask -> (H, W) int32 instance labels 1..N, one per 8-connected blob, in scan order
    (see the module docstring for fragments below ``MIN_FRAGMENT_PX``)."""
    if rgba.ndim != 3 or rgba.shape[-1] != 4:
        raise ValueError(f"expected an RGBA mask (H, W, 4), got shape {rgba.shape}")
    raw = np.where(rgba[..., 3] > 0, rgba[..., 1].astype(np.int32) * 256 + rgba[..., 2], 0)
    return split_blobs(raw, MIN_FRAGMENT_PX)


def split_blobs(ids: np.ndarray, min_fragment_px: int) -> np.ndarray:
    """(H, W) integer ids (0 = background) -> int32 labels with one label per 8-connected blob of one id,
    numbered 1..N in scan order; a blob under ``min_fragment_px`` pixels joins the largest blob of its id."""
    blobs = connected_components(ids, background=0, connectivity=2)
    size = np.bincount(blobs.ravel())
    owner = np.zeros(size.size, dtype=np.int64)
    owner[blobs.ravel()] = ids.ravel()
    target = np.arange(size.size)
    for blob in np.flatnonzero(size < min_fragment_px):
        if blob == 0:
            continue
        siblings = np.flatnonzero((owner == owner[blob]) & (size >= min_fragment_px))
        if siblings.size:
            target[blob] = siblings[np.argmax(size[siblings])]
    return relabel_sequential(target[blobs])[0].astype(np.int32)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def iter_mnfinder(package_dir: str | Path, splits: tuple[str, ...] = tuple(SPLIT_FOLDERS)) -> Iterator[MnfinderImage]:
    """Yield the images of ``splits`` under ``package_dir`` one at a time, sorted by path."""
    package_dir = Path(package_dir)
    for split in splits:
        folder = package_dir / SPLIT_FOLDERS[split]
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: mnfinder split folder missing; reinstall mnfinder==1.2.3")
        for image_path in sorted(folder.glob("*/images/*.tif")):
            mask_path = image_path.parent.parent / "nucleus_masks" / f"{image_path.stem}.png"
            if not mask_path.is_file():
                raise FileNotFoundError(f"{mask_path}: nucleus mask missing for {image_path}")
            with Image.open(mask_path) as mask:
                labels = decode_instance_mask(np.asarray(mask.convert("RGBA")))
            image = read_image(image_path)
            name = _safe_name(f"{image_path.parent.parent.name}_{image_path.stem}")
            yield MnfinderImage(split, name, image_path, image, labels)
