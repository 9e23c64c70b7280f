"""Hyper-parameters: ``params.yaml`` loaded into frozen dataclasses, validated with key paths.

Every section of ``params.yaml`` is a frozen dataclass below. A field's ``metadata`` may carry
``min`` / ``max`` (inclusive bounds), ``gt`` (exclusive lower bound) and ``choices``. Loading
reports *every* problem at once, one line each, always starting with the dotted key path::

    select.budgett: unknown key; did you mean select.budget?
    train.lr: must be > 0, got -0.1

Paths live in ``dvc.yaml``, secrets in the environment; neither belongs here.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DonusegParams",
    "EvaluateParams",
    "ModelParams",
    "PredictParams",
    "LabelStudioParams",
    "Params",
    "PseudomaskParams",
    "RoundsParams",
    "SelectParams",
    "SlidesParams",
    "StainParams",
    "TeacherParams",
    "TrainParams",
    "ParamsError",
    "load_params",
    "params_from_dict",
]


class ParamsError(ValueError):
    """One or more problems in a params file; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str], source: str = "params"):
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(problems))


def _f(default: Any, **meta: Any) -> Any:
    """A dataclass field with validation metadata (``min``, ``max``, ``gt``, ``choices``)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TeacherParams:
    """Vision-language teacher that scores every pool image (stage ``teacher``)."""

    # what the teacher is asked about; order = column order of teacher_probs (not what annotators click)
    classes: tuple[str, ...] = _f(("nucleus", "micronucleus", "background"))
    backend: str = _f("conse", choices=("conse", "clip", "file"))
    model: str | None = _f(None)  # clip: hub id or local dir (None = openai/clip-vit-base-patch32); file: path
    allow_download: bool = _f(False)  # clip: may fetch a hub id not yet in the local HF cache
    templates: tuple[str, ...] = _f(("a fluorescence microscopy image of {}.",))
    device: str = _f("auto", choices=("auto", "cpu", "cuda"))
    batch_size: int = _f(0, min=0, max=4096)  # tiles per forward pass; 0 = auto (CPU: conse 4, clip 32; CUDA 64)
    tile: int = _f(224, min=0, max=8192)  # tile side, pixels at native resolution; 0 = whole image
    max_tiles: int = _f(16, min=1, max=1024)  # per image; larger images get larger (downscaled) tiles
    percentile_low: float = _f(0.5, min=0.0, max=50.0)  # 16-bit / gray images: clip below this percentile
    percentile_high: float = _f(99.8, min=50.0, max=100.0)  # ... and above this one, then scale to 0..255
    top_t: int = _f(10, min=1, max=1000)  # conse: ImageNet classes combined per image
    temperature: float = _f(0.05, gt=0.0, max=10.0)  # conse: softmax(cosine / temperature)


@dataclass(frozen=True)
class SelectParams:
    """Active-learning selection of the images to annotate next (stage ``select``)."""

    strategy: str = _f(
        "pcoreset",
        choices=("pcoreset", "random", "entropy", "margin", "coreset", "class_balanced", "badge"),
    )
    budget: int = _f(5, min=1)  # images sent to annotators per round
    space: str = _f("teacher", choices=("teacher", "student"))  # whose probabilities are covered
    device: str = _f("auto", choices=("auto", "cpu", "cuda"))  # k-center: torch on CUDA when available, else numba
    # coreset / badge need the student's features table; true lets them use the probability rows instead
    probs_as_features: bool = _f(False)
    # whole-slide tiles: at most this many tiles of one slide per round's batch (None or 0 = no cap; plain images
    # are never capped); a cap that leaves too few candidates makes the batch smaller
    per_slide_cap: int | None = _f(None, min=0)


@dataclass(frozen=True)
class LabelStudioParams:
    """Annotation rounds in Label Studio; URL and token come from the environment, never from here."""

    project_title: str = _f("nucleate nuclei")
    point_radius_pct: float = _f(0.6, gt=0.0, max=10.0)  # keypoint marker size, percent of image width
    batch_size: int = _f(500, min=1, max=10_000)  # tasks per import request / export page
    retries: int = _f(4, min=0, max=20)  # extra tries when the server is unreachable
    retry_backoff_s: float = _f(0.5, gt=0.0, max=60.0)  # first wait; doubles each try
    agreement_radius_px: float = _f(6.0, gt=0.0)  # two annotators' points closer than this match
    consensus_min_fraction: float = _f(0.5, gt=0.0, max=1.0)  # share of annotators a consensus point needs
    sim_jitter_px: float = _f(1.0, min=0.0, max=100.0)  # simulated click: Gaussian sd per axis, pixels
    sim_miss_rate: float = _f(0.05, min=0.0, max=1.0)  # simulated annotator: share of nuclei not clicked
    sim_false_click_rate: float = _f(0.02, min=0.0, max=10.0)  # false clicks per true nucleus (Poisson mean)
    # where the display images annotators see live: "local" = the server's local-files root
    # (NUCLEATE_LS_FILES_ROOT), "s3" = s3://s3_bucket/s3_prefix/<image_id>.png (endpoint and keys: AWS_* env only)
    image_storage: str = _f("local", choices=("local", "s3"))
    s3_bucket: str = _f("")  # bucket of the display images when image_storage is s3
    s3_prefix: str = _f("nucleate/images")  # key prefix (a folder) in that bucket
    s3_presign: bool = _f(False)  # false: Label Studio streams the images itself; true: browsers get presigned S3 URLs


@dataclass(frozen=True)
class PseudomaskParams:
    """Points -> training masks (stage ``pseudomasks``; :func:`nucleate.pseudomask.from_points`).

    Lengths are multiples of ``nucleus_radius_px`` (r, pixels; :meth:`px`), ``min_area`` a multiple of r²
    (:meth:`area_px`). A disk of radius d px holds the pixels whose centres are <= d px away, i.e.
    ``skimage.morphology.disk(d)`` for integer d. The defaults are the values tuned on the sample pool + gold
    splits (BENCHMARKS.md); Qu et al.'s published recipe is the named preset
    ``nucleate.pseudomask.PRESETS["qu2019"]``. Constructing one with a bad value raises ``ValueError``.
    """

    method: str = _f("voronoi_cluster", choices=("voronoi", "cluster", "voronoi_cluster"))
    nucleus_radius_px: float = _f(20.0, gt=0.0, max=500.0)  # nucleus scale in pixels
    point_radius: float = _f(0.25, min=0.0, max=10.0)  # x r: nucleus disk around each point (Voronoi label)
    distance_clip: float = _f(2.0, gt=0.0, max=100.0)  # x r: clip of the distance-to-point feature
    distance_weight: float = _f(1.2, min=0.0, max=100.0)  # k-means weight of the distance-to-point feature
    overlap_radius: float = _f(0.5, min=0.0, max=100.0)  # x r: point disks that tell the background cluster
    background_margin: float = _f(1.0, min=0.0, max=100.0)  # x r: no background this close to a point
    dilate: float = _f(0.2, min=0.0, max=10.0)  # cluster refinement dilation, x r
    erode: float = _f(0.2, min=0.0, max=10.0)  # cluster refinement erosion, x r
    # labels: one label-aware closing (neighbours never merge); per_cell: Qu's independent closing per cell
    refine: str = _f("labels", choices=("labels", "per_cell"))
    min_area: float = _f(0.314, min=0.0, max=100.0)  # x r^2: smaller nucleus-cluster blobs are dropped
    keep_unclicked: bool = _f(True)  # keep nucleus-cluster blobs without a click (Qu) instead of ignoring them
    sample_pixels: int = _f(20_000, min=3, max=10**9)  # pixels the k-means is fitted on
    min_gold_dice: float = _f(0.9, min=0.0, max=1.0)  # QC gate: mean labeled-pixel Dice on gold images
    min_gold_labeled_fraction: float = _f(0.3, min=0.0, max=1.0)  # QC gate: mean share of gold pixels labeled
    min_gold_whole_dice: float = _f(0.7, min=0.0, max=1.0)  # QC gate: mean whole-image Dice on gold images

    def __post_init__(self) -> None:
        _INF = float("inf")  # noqa: N806 - NaN fails both comparisons
        problems = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = {"str": str, "float": float, "int": int, "bool": bool}[str(f.type)]
            if kind is float:
                ok = isinstance(value, int | float) and not isinstance(value, bool) and -_INF < value < _INF
            elif kind is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, kind)
            message = _check_range(value, f.metadata) if ok else f"expected {_type_name(kind)}, got {_show(value)}"
            if message:
                problems.append(f"pseudomask.{f.name}: {message}")
        if problems:
            raise ValueError("; ".join(problems))

    def px(self, name: str) -> float:
        """Length field ``name`` in pixels (its factor times ``nucleus_radius_px``)."""
        return float(getattr(self, name)) * self.nucleus_radius_px

    def area_px(self, name: str) -> float:
        """Area field ``name`` in pixels (its factor times ``nucleus_radius_px`` squared)."""
        return float(getattr(self, name)) * self.nucleus_radius_px**2


@dataclass(frozen=True)
class ModelParams:
    """The student network (:class:`nucleate.models.ModelSpec`) and the nucleus scale it works at."""

    encoder: str = _f("resnet", choices=("resnet", "efficientnet-lite0"))
    pretrained: bool = _f(False)  # efficientnet-lite0 only: start from the ImageNet weights (installed, offline)
    width: int = _f(32, min=4, max=512)  # resnet encoder: stem channels; stage k has width * 2**(k-1)
    heatmap_decoder: str = _f("separate", choices=("separate", "shared"))  # point heat-map branch
    # images are resized by nucleus_radius_px / (the data's nucleus radius) before the network sees them
    nucleus_radius_px: float = _f(10.0, gt=0.0, max=500.0)


@dataclass(frozen=True)
class TrainParams:
    """Student training (stage ``train``; :mod:`nucleate.training`)."""

    supervision: str = _f("donuseg", choices=("qu2019", "donuseg", "full"))
    epochs: int = _f(16, min=1, max=100_000)
    steps_per_epoch: int = _f(20, min=0, max=10**7)  # 0 = one pass over the training pixels per epoch
    batch_size: int = _f(8, min=1, max=1024)  # crops per optimiser step
    patch_px: int = _f(128, min=32, max=4096)  # square crop side at the model's scale, pixels
    lr: float = _f(2e-3, gt=0.0, max=1.0)  # AdamW peak learning rate (cosine decay to 0)
    weight_decay: float = _f(1e-4, min=0.0, max=1.0)  # AdamW
    warmup_steps: int = _f(20, min=0, max=10**7)  # linear learning-rate warm-up before the cosine
    intensity_jitter: float = _f(0.2, min=0.0, max=1.0)  # brightness / contrast / gamma augmentation strength
    heatmap_sigma: float = _f(0.33, gt=0.0, max=10.0)  # x model.nucleus_radius_px: Gaussian of the point heat-map
    kd_weight: float = _f(0.5, min=0.0, max=100.0)  # ActiveKD image-level KD from teacher_probs (0 = off)
    kd_temperature: float = _f(2.0, gt=0.0, max=100.0)  # KD temperature T (loss scaled by T^2)
    kd_unlabeled: int = _f(2, min=0, max=1024)  # unannotated pool crops per step for the KD term
    val_every: int = _f(4, min=0, max=100_000)  # epochs between gold-split Dice in the metrics CSV (0 = never)
    device: str = _f("auto", choices=("auto", "cpu", "cuda"))
    amp: bool = _f(True)  # CUDA only: bf16 autocast (fp16 + grad scaling where bf16 is missing)
    channels_last: bool = _f(True)  # CUDA only
    threads: int = _f(0, min=0, max=1024)  # CPU threads for torch (0 = torch's default)


@dataclass(frozen=True)
class DonusegParams:
    """DoNuSeg reconstruction (methods.md 1.3): dynamic CAM selection, CAM-guided contrast, heat-map head."""

    cam_threshold: float = _f(0.5, gt=0.0, max=1.0)  # theta: CAM_k >= theta -> nucleus in C_k
    # alpha_k: miou = mean IoU of C_k with M's nuclei and of its complement with M's background; iou = the
    # nucleus IoU only; coverage = |C_k & M_fg| / |M_fg| (all over M's labeled pixels)
    similarity: str = _f("miou", choices=("miou", "iou", "coverage"))
    cam_selection: str = _f("dynamic", choices=("dynamic", "last"))  # dynamic: best-alpha block; last: stage 4
    pseudo_label: str = _f("fill_ignore", choices=("fill_ignore", "replace"))  # P where M ignores, or P everywhere
    start_epoch: int = _f(4, min=0, max=100_000)  # first epoch (0-based) that uses P and the contrast term
    refresh_epochs: int = _f(4, min=1, max=100_000)  # E: P is recomputed every E epochs from start_epoch
    lambda_p: float = _f(1.0, min=0.0, max=100.0)  # weight of L_seg(P)
    lambda_con: float = _f(0.1, min=0.0, max=100.0)  # weight of the CAM-guided contrastive loss
    lambda_det: float = _f(1.0, min=0.0, max=100.0)  # weight of the heat-map loss (0 = no heat-map head)
    con_temperature: float = _f(0.1, gt=0.0, max=10.0)  # InfoNCE temperature
    con_confidence: float = _f(0.7, min=0.5, max=1.0)  # CAM >= this: confident nucleus; <= 1 - this: background
    con_pixels: int = _f(256, min=1, max=10**6)  # pixels sampled per class per batch


@dataclass(frozen=True)
class PredictParams:
    """Inference (stage ``predict``; :mod:`nucleate.inference`)."""

    window_px: int = _f(512, min=32, max=8192)  # sliding window side at the model's scale
    overlap: float = _f(0.25, min=0.0, max=0.9)  # window overlap, fraction of window_px (blended)
    batch_size: int = _f(0, min=0, max=1024)  # windows per forward pass; 0 = auto (CPU 1, CUDA 8)
    threshold: float = _f(0.5, gt=0.0, max=1.0)  # nucleus probability -> foreground
    markers: str = _f("auto", choices=("auto", "heatmap", "distance"))  # auto: heatmap if the model trained it
    peak_threshold: float = _f(0.35, gt=0.0, max=1.0)  # heat-map peaks (sigmoid) at least this high
    peak_distance: float = _f(0.5, gt=0.0, max=10.0)  # x model radius: minimum distance between peaks/markers
    min_area: float = _f(0.2, min=0.0, max=100.0)  # x model radius^2: smaller instances are dropped
    device: str = _f("auto", choices=("auto", "cpu", "cuda"))


@dataclass(frozen=True)
class EvaluateParams:
    """Evaluation against full ground truth (stage ``evaluate``)."""

    iou_threshold: float = _f(0.5, min=0.5, max=1.0)  # PQ matching; > 0.5 keeps matches unique
    match_radius_px: float = _f(6.0, gt=0.0)  # detection F1: max centroid distance, pixels


@dataclass(frozen=True)
class RoundsParams:
    """When a round is closed, and the schedules of ``nucleate serve`` (flows ``open-round`` and ``watch``)."""

    min_finished_fraction: float = _f(1.0, gt=0.0, max=1.0)  # close once this share of the round's tasks is done
    deadline_hours: float = _f(0.0, min=0.0)  # ... or this long after the push, with whatever is done (0 = never)
    watch_cron: str = _f("*/10 * * * *")  # how often the watcher reads Label Studio's progress
    open_cron: str = _f("")  # when a new round opens by itself ("" = only when started by hand / the UI)
    timezone: str = _f("UTC")  # time zone of the two cron schedules


@dataclass(frozen=True)
class SlidesParams:
    """Whole-slide images: tissue detection once per slide, then a tile grid (:mod:`nucleate.slides`)."""

    target_mpp: float = _f(0.5, gt=0.0, max=100.0)  # tile resolution, µm per pixel (0.5 = 20x)
    tile_px: int = _f(448, min=16, max=8192)  # tile side, pixels at target_mpp (+ overlap = predict window: one pass)
    tissue_threshold: float = _f(0.25, min=0.0, max=1.0)  # keep tiles whose tissue fraction is at least this
    thumbnail_mpp: float = _f(4.0, gt=0.0, max=1000.0)  # tissue mask resolution, µm per pixel
    tissue_channel: str = _f("saturation", choices=("saturation", "optical_density"))  # thresholded by Otsu
    min_saturation: float = _f(0.05, min=0.0, max=1.0)  # HSV saturation below this is never tissue (Otsu floor)
    min_optical_density: float = _f(0.05, min=0.0, max=3.0)  # mean RGB OD below this is never tissue (Otsu floor)
    closing_um: float = _f(16.0, min=0.0, max=10_000.0)  # binary closing disk radius, µm
    min_object_um2: float = _f(5000.0, min=0.0)  # tissue pieces smaller than this (µm²) are dropped
    min_hole_um2: float = _f(5000.0, min=0.0)  # holes in tissue smaller than this (µm²) are filled
    predict_overlap_px: int = _f(64, min=0, max=4096)  # predict: px at target_mpp two neighbouring windows share
    slide_mpp: float | None = _f(None, gt=0.0, max=100.0)  # level-0 µm/px of slides without it in metadata


@dataclass(frozen=True)
class StainParams:
    """H&E stain (:mod:`nucleate.stain`): normalisation to a reference and the stain-aware representation.

    RGB images only; gray (fluorescence) images pass unchanged whatever is set here.
    """

    normalise: str = _f("none", choices=("none", "macenko", "reinhard"))  # map each RGB image's stain to the reference
    reference: str = _f("")  # H&E image whose stain is the target ("" = nucleate.stain.BUNDLED_REFERENCE)
    cluster_input: str = _f("image", choices=("image", "hematoxylin"))  # pseudo-mask k-means intensity feature
    student_input: str = _f("image", choices=("image", "hematoxylin"))  # what the student network sees
    io: float = _f(240.0, gt=0.0, max=255.0)  # Macenko: white level (transmitted light), 8-bit units
    beta: float = _f(0.15, gt=0.0, max=5.0)  # Macenko: optical density below this in every channel = glass, not fitted
    alpha: float = _f(1.0, gt=0.0, max=49.0)  # Macenko: stain vectors at the alpha / 100-alpha angle percentiles


@dataclass(frozen=True)
class Params:
    """All hyper-parameters; one attribute per top-level key of ``params.yaml``."""

    seed: int = _f(0, min=0, max=2**32 - 1)
    labels: tuple[str, ...] = _f(("nucleus", "micronucleus"))  # point labels annotators click (Label Studio keys)
    teacher: TeacherParams = field(default_factory=TeacherParams)
    select: SelectParams = field(default_factory=SelectParams)
    labelstudio: LabelStudioParams = field(default_factory=LabelStudioParams)
    pseudomask: PseudomaskParams = field(default_factory=PseudomaskParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    donuseg: DonusegParams = field(default_factory=DonusegParams)
    predict: PredictParams = field(default_factory=PredictParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    rounds: RoundsParams = field(default_factory=RoundsParams)
    slides: SlidesParams = field(default_factory=SlidesParams)
    stain: StainParams = field(default_factory=StainParams)


def load_params(path: str | Path) -> Params:
    """Read ``params.yaml`` at ``path`` and return validated, frozen :class:`Params`.

    Missing keys take the defaults above. Raises :class:`ParamsError` listing every unknown key,
    wrong type and out-of-range value by dotted key path, and ``FileNotFoundError`` for a missing file.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ParamsError([f"<file>: not valid YAML: {exc}"], source=str(path)) from None
    return params_from_dict({} if raw is None else raw, source=str(path))


def params_from_dict(raw: Any, source: str = "params") -> Params:
    """Validate a mapping shaped like ``params.yaml`` and build :class:`Params`."""
    problems: list[str] = []
    value = _build(Params, raw, "", problems)
    if problems:
        raise ParamsError(problems, source=source)
    return value


#: keys of older params files -> how to update them (checked before "unknown key")
MOVED_KEYS: dict[str, str] = {
    "classes": "moved: the teacher's class list is now teacher.classes, and the point labels annotators click "
    "are the top-level key labels (e.g. labels: [nucleus]); move the list under teacher: as classes: and add "
    "labels: without background",
}


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    where = prefix.rstrip(".") or "<top level>"
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping of keys, got {_show(raw)}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        moved = MOVED_KEYS.get(f"{prefix}{key}")
        if key not in fields and moved:
            problems.append(f"{prefix}{key}: {moved}")
        elif key not in fields:
            hint = difflib.get_close_matches(str(key), list(fields), n=1)
            advice = f"; did you mean {prefix}{hint[0]}?" if hint else f"; known keys: {', '.join(fields)}"
            problems.append(f"{prefix}{key}: unknown key{advice}")
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        path = f"{prefix}{name}"
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            kwargs[name] = _build(kind, raw[name], path + ".", problems)
            continue
        ok, value = _coerce(kind, raw[name])
        if not ok:
            problems.append(f"{path}: expected {_type_name(kind)}, got {_show(raw[name])}")
            continue
        message = _check_range(value, f.metadata)
        if message:
            problems.append(f"{path}: {message}")
            continue
        kwargs[name] = value
    return cls(**kwargs)


def _coerce(kind: Any, value: Any) -> tuple[bool, Any]:
    """Return (ok, value converted to ``kind``); bools are never accepted as numbers."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(kind):
            return True, None
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        return _coerce(inner[0], value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False, value
        (item,) = {a for a in typing.get_args(kind) if a is not Ellipsis}
        converted = [_coerce(item, v) for v in value]
        if not all(ok for ok, _ in converted):
            return False, value
        return True, tuple(v for _, v in converted)
    if kind is bool:
        return isinstance(value, bool), value
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if kind is str:
        return isinstance(value, str), value
    raise TypeError(f"unsupported params type {kind!r}")  # pragma: no cover - programming error


def _check_range(value: Any, meta: typing.Mapping[str, Any]) -> str | None:
    if value is None:
        return None
    if "choices" in meta and value not in meta["choices"]:
        return f"must be one of {', '.join(map(str, meta['choices']))}; got {value!r}"
    if isinstance(value, tuple):
        if not value:
            return "must not be empty"
        if len(set(value)) != len(value):
            return f"has duplicate entries: {list(value)}"
        return None
    if "gt" in meta and not value > meta["gt"]:
        return f"must be > {meta['gt']}, got {value}"
    if "min" in meta and value < meta["min"]:
        return f"must be >= {meta['min']}, got {value}"
    if "max" in meta and value > meta["max"]:
        return f"must be <= {meta['max']}, got {value}"
    return None


def _type_name(kind: Any) -> str:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        return f"{_type_name(inner[0])} or null"
    if origin is tuple:
        (item,) = {a for a in typing.get_args(kind) if a is not Ellipsis}
        return f"a list of {_type_name(item)}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[kind]


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
