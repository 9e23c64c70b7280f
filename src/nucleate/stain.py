"""H&E stain: normalisation to a reference (Macenko 2009, Reinhard 2001) and the hematoxylin channel.

Every function takes and returns images as :func:`nucleate.io.read_image` gives them ((H, W) gray or (H, W, 3)
RGB, uint8 / uint16). Stain operations act on **RGB images only**; gray (fluorescence) images pass through
unchanged, so a stain setting never alters a fluorescence project. uint16 RGB is reduced to 8 bits (>> 8)
before any stain operation.

* **Optical density** (Macenko): ``OD = -ln((I + 1) / io)`` per channel, ``io`` = the white level (the
  transmitted light intensity, 240 in Macenko's reference code).
* **Macenko et al. (ISBI 2009)**: the pixels with OD >= ``beta`` in at least one channel (tissue, not glass) are
  projected onto the plane of the two largest eigenvectors of their OD covariance; the angle of each
  projection is taken, and the two stain vectors are the directions at the ``alpha`` and ``100 - alpha``
  percentiles of that angle (the one with the larger red OD component is hematoxylin). Concentrations
  are the least-squares solution of ``OD = stains @ C``, scaled so that their 99th percentile equals the
  reference's, then re-rendered with the reference's stain vectors: ``I = io * exp(-stains_ref @ C)``.
  (The reference code drops a pixel whose OD is below ``beta`` in *any* channel; that also drops pale eosin
  pixels with little blue absorption, and on the pseudo-H&E sample it kept 2-10 % of the pixels, mostly
  nuclei, and found a wrong eosin vector. Glass is below ``beta`` in *every* channel.)
* **Reinhard et al. (2001)**, in CIELAB (:func:`skimage.color.rgb2lab`): each channel is standardised
  with the image's mean and standard deviation and rescaled to the reference's.
* **Hematoxylin channel**: :func:`skimage.color.rgb2hed` channel 0 (Ruifrok & Johnston colour
  deconvolution), float32; consumers stretch it with :func:`nucleate.io.percentile_stretch` as every
  other image. Nuclei are bright in it, as in a fluorescence nuclear channel.

The reference is a :class:`StainReference`: the bundled :data:`BUNDLED_REFERENCE` or one computed from a
user's H&E image (:func:`load_reference`). Hyper-parameters: :class:`nucleate.config.StainParams`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from skimage.color import lab2rgb, rgb2hed, rgb2lab

from nucleate.config import StainParams
from nucleate.io.images import ImageError, read_image

__all__ = [
    "BUNDLED_REFERENCE",
    "MIN_TISSUE_PIXELS",
    "StainError",
    "StainReference",
    "StainTransform",
    "apply_stain",
    "hematoxylin",
    "lab_stats",
    "load_reference",
    "macenko_normalise",
    "macenko_stains",
    "optical_density",
    "reference_from_image",
    "reinhard_normalise",
    "resolve_reference",
    "to_rgb8",
]

#: an image with fewer tissue pixels (OD >= beta in some channel) than this has no measurable stain:
#: Macenko normalisation returns it unchanged (a blank tile)
MIN_TISSUE_PIXELS = 100


class StainError(ValueError):
    """A stain reference cannot be used; the message is one line naming the file and what to do."""


@dataclass(frozen=True)
class StainReference:
    """The target stain. ``stain_matrix`` (3, 2): unit OD vectors (rows R, G, B; columns hematoxylin, eosin);
    ``max_concentrations`` (2,): 99th percentile H and E concentrations; ``lab_mean`` / ``lab_std`` (3,): CIELAB
    mean and standard deviation of the reference's pixels (Reinhard). ``source``: where the numbers came from."""

    stain_matrix: tuple[tuple[float, float], ...]
    max_concentrations: tuple[float, float]
    lab_mean: tuple[float, float, float]
    lab_std: tuple[float, float, float]
    source: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (stored in a model's ``extra`` so prediction uses the same target)."""
        return {"stain_matrix": [list(r) for r in self.stain_matrix],
                "max_concentrations": list(self.max_concentrations), "lab_mean": list(self.lab_mean),
                "lab_std": list(self.lab_std), "source": self.source}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StainReference:
        return cls(tuple(tuple(float(v) for v in r) for r in data["stain_matrix"]),
                   tuple(float(v) for v in data["max_concentrations"]), tuple(float(v) for v in data["lab_mean"]),
                   tuple(float(v) for v in data["lab_std"]), str(data["source"]))


#: the bundled target. Stain vectors and max concentrations: the reference values of Macenko's method in the
#: reference implementations (github.com/mitkovetta/staining-normalization, also torchstain, MIT; io = 240,
#: natural log). CIELAB statistics: those of the same target's look, measured on the pseudo-H&E sample gold split
#: (`nucleate sample-data --he`, seed 0) Macenko-normalised to these stain vectors, all pixels
#: together (benchmarks/bench_he.py ``reference`` recomputes them).
BUNDLED_REFERENCE = StainReference(
    stain_matrix=((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581)),
    max_concentrations=(1.9705, 1.0308),
    lab_mean=(51.8833, 35.4503, -4.3664),
    lab_std=(5.2542, 3.6416, 4.9912),
    source="bundled",
)


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 from uint8 (unchanged) or uint16 (>> 8) RGB."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8 or uint16 RGB, got {image.dtype}")
    return image


def optical_density(rgb: np.ndarray, io: float) -> np.ndarray:
    """(N, 3) float64 OD = -ln((I + 1) / io) of the pixels of an (H, W, 3) uint8 image."""
    return -np.log((to_rgb8(rgb).reshape(-1, 3).astype(np.float64) + 1.0) / io)


def macenko_stains(rgb: np.ndarray, params: StainParams) -> tuple[np.ndarray, np.ndarray] | None:
    """(stain_matrix (3, 2), max_concentrations (2,)) of an (H, W, 3) image by Macenko's method (module
    docstring); ``None`` when it has fewer than :data:`MIN_TISSUE_PIXELS` tissue pixels."""
    od = optical_density(rgb, params.io)
    tissue = od[np.any(od >= params.beta, axis=1)]
    if len(tissue) < MIN_TISSUE_PIXELS:
        return None
    _, vectors = np.linalg.eigh(np.cov(tissue.T))
    plane = vectors[:, 1:3]  # the two largest eigenvalues (eigh sorts ascending)
    projected = tissue @ plane
    angle = np.arctan2(projected[:, 1], projected[:, 0])
    lo, hi = np.percentile(angle, [params.alpha, 100.0 - params.alpha])
    v_lo = plane @ np.array([np.cos(lo), np.sin(lo)])
    v_hi = plane @ np.array([np.cos(hi), np.sin(hi)])
    stains = np.stack([v_lo, v_hi] if v_lo[0] > v_hi[0] else [v_hi, v_lo], axis=1)
    stains *= np.sign(stains.sum(axis=0, keepdims=True))  # OD vectors point to positive density
    stains /= np.linalg.norm(stains, axis=0, keepdims=True)
    conc = np.linalg.lstsq(stains, od.T, rcond=None)[0]
    return stains, np.percentile(conc, 99, axis=1)


def macenko_normalise(rgb: np.ndarray, reference: StainReference, params: StainParams) -> np.ndarray:
    """(H, W, 3) uint8: ``rgb``'s stain concentrations re-rendered with the reference stain (module docstring).
    A blank image (see :func:`macenko_stains`) is returned unchanged (as uint8)."""
    rgb = to_rgb8(rgb)
    fitted = macenko_stains(rgb, params)
    if fitted is None:
        return rgb
    stains, max_conc = fitted
    od = optical_density(rgb, params.io)
    conc = np.linalg.lstsq(stains, od.T, rcond=None)[0]
    conc *= (np.asarray(reference.max_concentrations) / np.maximum(max_conc, 1e-6))[:, None]
    out = params.io * np.exp(-np.asarray(reference.stain_matrix) @ conc)
    return np.clip(np.rint(out.T), 0, 255).astype(np.uint8).reshape(rgb.shape)


def lab_stats(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CIELAB (mean (3,), standard deviation (3,)) of an RGB image's pixels."""
    lab = rgb2lab(to_rgb8(rgb)).reshape(-1, 3)
    return lab.mean(axis=0), lab.std(axis=0)


def reinhard_normalise(rgb: np.ndarray, reference: StainReference) -> np.ndarray:
    """(H, W, 3) uint8: each CIELAB channel standardised and rescaled to the reference's mean and std."""
    rgb = to_rgb8(rgb)
    lab = rgb2lab(rgb)
    mean, std = lab.reshape(-1, 3).mean(axis=0), lab.reshape(-1, 3).std(axis=0)
    lab = (lab - mean) / np.maximum(std, 1e-6) * np.asarray(reference.lab_std) + np.asarray(reference.lab_mean)
    return np.clip(np.rint(lab2rgb(lab) * 255.0), 0, 255).astype(np.uint8)


def reference_from_image(rgb: np.ndarray, params: StainParams, source: str) -> StainReference:
    """The :class:`StainReference` of an H&E image; ``ValueError`` when it shows too little tissue."""
    fitted = macenko_stains(rgb, params)
    if fitted is None:
        raise ValueError(f"fewer than {MIN_TISSUE_PIXELS} tissue pixels (optical density >= stain.beta = "
                         f"{params.beta} in some channel)")
    stains, max_conc = fitted
    mean, std = lab_stats(rgb)
    return StainReference(tuple(tuple(float(v) for v in row) for row in stains), tuple(float(v) for v in max_conc),
                          tuple(float(v) for v in mean), tuple(float(v) for v in std), source)


def load_reference(path: str | Path, params: StainParams) -> StainReference:
    """The reference of the H&E image file ``path``; :class:`StainError` (one line) when it cannot serve."""
    path = Path(path)
    fix = "set stain.reference to an H&E RGB image (PNG / TIFF / JPEG) or to \"\" for the bundled reference"
    if not path.is_file():
        raise StainError(f"stain.reference: {path}: no such file; {fix}")
    try:
        image = read_image(path)
    except ImageError as exc:
        raise StainError(f"stain.reference: {exc}; {fix}") from None
    if image.ndim != 3:
        raise StainError(f"stain.reference: {path}: a gray image has no stain colours; {fix}")
    try:
        return reference_from_image(image, params, source=str(path))
    except ValueError as exc:
        raise StainError(f"stain.reference: {path}: {exc}; choose a tile with tissue") from None


def resolve_reference(params: StainParams, root: str | Path | None = None) -> StainReference | None:
    """The reference ``params`` asks for: ``None`` when ``normalise`` is ``none``, the bundled one for
    ``reference: ""``, else :func:`load_reference` (a relative path is taken from ``root`` when given)."""
    if params.normalise == "none":
        return None
    if not params.reference:
        return BUNDLED_REFERENCE
    path = Path(params.reference)
    return load_reference(path if path.is_absolute() or root is None else Path(root) / path, params)


def hematoxylin(rgb: np.ndarray) -> np.ndarray:
    """(H, W) float32 hematoxylin concentration (:func:`skimage.color.rgb2hed` channel 0) of an RGB image."""
    return rgb2hed(to_rgb8(rgb))[..., 0].astype(np.float32)


def apply_stain(image: np.ndarray, params: StainParams, reference: StainReference | None, representation: str
                ) -> np.ndarray:
    """``image`` as one consumer sees it: normalised to ``reference`` (``params.normalise``), then
    ``representation`` (``image`` = as is, ``hematoxylin`` = :func:`hematoxylin`, (H, W) float32).

    Gray images, and every image when nothing is asked, are returned unchanged (the same object).
    """
    image = np.asarray(image)
    if image.ndim != 3 or (params.normalise == "none" and representation == "image"):
        return image
    if params.normalise != "none":
        if reference is None:
            raise ValueError("apply_stain: stain.normalise is set but no reference was given (resolve_reference)")
        image = macenko_normalise(image, reference, params) if params.normalise == "macenko" \
            else reinhard_normalise(image, reference)
    if representation == "hematoxylin":
        return hematoxylin(image)
    if representation != "image":
        raise ValueError(f"unknown stain representation {representation!r}; use image or hematoxylin")
    return image


@dataclass(frozen=True)
class StainTransform:
    """A stain section with its resolved reference: what the pseudo-masks (:meth:`cluster`) and the student
    (:meth:`student`) see of an image. Picklable (Dask workers); :meth:`to_extra` / :meth:`from_extra` carry
    the student's side inside a saved model, so prediction transforms images as training did."""

    params: StainParams
    reference: StainReference | None

    @classmethod
    def from_params(cls, params: StainParams, root: str | Path | None = None) -> StainTransform:
        """Resolve ``params.reference`` (:func:`resolve_reference`; :class:`StainError` for a bad file)."""
        return cls(params, resolve_reference(params, root))

    def cluster(self, image: np.ndarray) -> np.ndarray:
        """``image`` for the pseudo-mask k-means (``cluster_input``)."""
        return apply_stain(image, self.params, self.reference, self.params.cluster_input)

    def student(self, image: np.ndarray) -> np.ndarray:
        """``image`` for the student network (``student_input``), before :func:`nucleate.models.network_input`."""
        return apply_stain(image, self.params, self.reference, self.params.student_input)

    def to_extra(self) -> dict[str, Any] | None:
        """The student's side as JSON for a model's ``extra["stain"]``; None when the student sees images as
        read (then nothing is recorded, and models stay as before)."""
        if self.params.normalise == "none" and self.params.student_input == "image":
            return None
        return {"params": dataclasses.asdict(self.params),
                "reference": None if self.reference is None else self.reference.to_dict()}

    @classmethod
    def from_extra(cls, data: dict[str, Any]) -> StainTransform:
        """Inverse of :meth:`to_extra` (the reference's numbers, not its file, travel with the model)."""
        reference = data.get("reference")
        return cls(StainParams(**data["params"]), None if reference is None else StainReference.from_dict(reference))
