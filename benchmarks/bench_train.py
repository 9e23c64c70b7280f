"""Student training and inference speed on the CPU: each speed-up against a plain fp32 eager baseline, same run.

Prints one JSON document. Settings come from ``params.yaml`` (``model``, ``train``, ``predict``); the model is
the student of ``model`` (random weights, 3 image classes), the data synthetic bright disks of the model's
nucleus radius on noise (``--sample DIR``: the sample's pool images with their ground-truth centroids as
clicks, at the model's scale) turned into Voronoi + cluster pseudo-masks by :func:`nucleate.pseudomask.from_points`.

**Training** (``train``): one step = :func:`nucleate.training.sample_batch` (``train.batch_size`` crops of
``train.patch_px``) + forward + loss + backward + AdamW. The loss is the point-supervised one of the library
before DoNuSeg's pseudo labels start: CE with ignore on the Voronoi and on the cluster map + heat-map BCE
(:mod:`nucleate.training.losses`). Every variant starts from the same weights and draws the same batches;
``--warmup`` untimed steps, then the median of ``--steps`` timed steps (``data_ms``: crop sampling,
``compute_ms``: the rest; ``crops_per_s`` from their sum). Variants:

* ``baseline`` — fp32, contiguous tensors, deterministic algorithms off;
* ``deterministic`` — ``torch.use_deterministic_algorithms(True)``, as :func:`nucleate.training.train` runs on
  the CPU (for bit-identical resumes);
* ``channels_last`` — model and input in channels-last memory format;
* ``bf16_autocast`` — ``torch.autocast("cpu", bfloat16)``; ``max_abs_dloss_first_step`` compares its first
  loss with the fp32 one (same weights, same batch): the agreement check;
* ``compile`` — ``torch.compile`` of the model, in a subprocess stopped ``--compile-timeout`` seconds after
  its data are ready (compilation and timed steps included); ``"unavailable: ..."`` when it fails or runs
  out of time.

``train_loop``: the library's whole :func:`nucleate.training.train` (CPU, ``epochs`` x ``steps_per_epoch``
of the same crops and loss), its history rows (``crops_per_s``, ``data_s`` / ``step_s``) and the median
crops/s of the epochs after the first.

**Inference** (``inference``): megapixels/s of whole-image sliding-window prediction of a ``--infer-px``
square gray image (``predict.window_px``, ``predict.overlap``): ``baseline`` = one fp32 eager forward per
window under ``torch.no_grad`` (batch 1, contiguous) with the windows' probabilities averaged; then the
library's ``nucleate.inference.predict_maps`` at batch 1 and ``--infer-batch`` (default
``predict.batch_size``), channels-last and bf16 autocast (``max_abs_dfg_vs_fp32``: largest foreground
probability difference from the library's fp32 maps). Without ``nucleate.inference`` only the baseline runs.

Ratios are ``<variant>/baseline`` throughputs (> 1 = faster). The machine may be shared: ``load_avg_1min``
is recorded; use ``--threads 1`` for a per-core figure.

    python benchmarks/bench_train.py [--threads N] [--steps 10] [--sample DIR] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from skimage.draw import disk as draw_disk

from nucleate.config import Params, load_params
from nucleate.models import build_from_spec, network_input
from nucleate.pseudomask import from_points
from nucleate.training import TrainingImage, model_spec, prepare_image, sample_batch, train
from nucleate.training.losses import heatmap_loss, seg_loss

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 3
#: smoke-test sizes (--quick): tiny model, crops and image
QUICK = {"width": 8, "patch_px": 64, "batch_size": 2, "image_px": 192, "images": 2, "infer_px": 192,
         "window_px": 128, "steps": 2, "warmup": 1, "epochs": 2, "steps_per_epoch": 2, "compile_timeout": 5.0}
#: seconds the compile subprocess may take to import torch and prepare its data
STARTUP_LIMIT_S = 600.0
VARIANTS = ("baseline", "deterministic", "channels_last", "bf16_autocast")


# ---------------------------------------------------------------------------------------------- data

def disk_image(size: int, radius: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint16 (size, size) image of bright disks of ``radius`` px on noise and their centres (K, 2) xy px.

    Centres sit on a jittered grid (spacing 3 radii, a fifth dropped), so disks never touch.
    """
    rng = np.random.default_rng(seed)
    spacing = 3.0 * radius
    grid = np.arange(spacing / 2, size - spacing / 2 + 1e-9, spacing)
    xy = np.array([(x, y) for y in grid for x in grid], np.float64).reshape(-1, 2)
    xy = xy[rng.random(len(xy)) > 0.2]
    xy = xy + rng.uniform(-0.1 * spacing, 0.1 * spacing, xy.shape)  # centres >= 2.4 radii apart
    image = rng.normal(800.0, 40.0, (size, size))
    for x, y in xy:
        rr, cc = draw_disk((y - 0.5, x - 0.5), radius * rng.uniform(0.8, 1.1), shape=image.shape)
        image[rr, cc] += rng.uniform(1500.0, 2500.0)
    return image.clip(0, 65535).astype(np.uint16), xy


def training_images(params: Params, *, patch_px: int, count: int, size: int, sample: Path | None = None,
                    seed: int = 0) -> tuple[list[TrainingImage], dict]:
    """``count`` :class:`TrainingImage` s with Voronoi + cluster maps and heat-maps, and a description.

    Synthetic (``size`` px disks of the model's radius, scale 1) unless ``sample`` is a sample directory
    (images/pool/*.tif + masks/pool/*.tif: centroids as clicks, scale model / pseudomask radius).
    """
    model_r = params.model.nucleus_radius_px
    sigma = params.train.heatmap_sigma * model_r
    items = []
    if sample is None:
        pm_params = dataclasses.replace(params.pseudomask, nucleus_radius_px=model_r)
        for i in range(count):
            image, xy = disk_image(size, model_r, seed + i)
            pm = from_points(image, xy, params=pm_params, seed=seed)
            items.append(prepare_image(f"disks{i}", image, scale=1.0, patch_px=patch_px, points_xy=xy,
                                       heatmap_sigma_px=sigma, voronoi=pm.voronoi, cluster=pm.cluster,
                                       semantic=pm.semantic))
        return items, {"kind": "synthetic disks", "images": count, "image_px": size, "radius_px": model_r}
    from nucleate.annotations import centroids_xy
    from nucleate.io import read_image, read_labels

    paths = sorted((sample / "images" / "pool").glob("*.tif"))[:count]
    if not paths:
        raise SystemExit(f"{sample}: no images/pool/*.tif; pass a sample directory (tasks sample-data writes one)")
    scale = model_r / params.pseudomask.nucleus_radius_px
    for path in paths:
        image = read_image(path)
        xy = centroids_xy(read_labels(sample / "masks" / "pool" / path.name))[1]
        pm = from_points(image, xy, params=params.pseudomask, seed=seed)
        items.append(prepare_image(path.name, image, scale=scale, patch_px=patch_px, points_xy=xy,
                                   heatmap_sigma_px=sigma, voronoi=pm.voronoi, cluster=pm.cluster,
                                   semantic=pm.semantic))
    return items, {"kind": f"sample pool ({sample})", "images": len(items), "scale": scale,
                   "shapes": sorted({f"{im.shape[0]}x{im.shape[1]}" for im in items})}


def bench_params(args: argparse.Namespace) -> Params:
    """params.yaml (``--params``) with the --quick sizes applied."""
    params = load_params(args.params)
    if args.quick:
        params = dataclasses.replace(
            params, model=dataclasses.replace(params.model, width=QUICK["width"]),
            train=dataclasses.replace(params.train, patch_px=QUICK["patch_px"], batch_size=QUICK["batch_size"]),
            predict=dataclasses.replace(params.predict, window_px=QUICK["window_px"]))
    return params


# ------------------------------------------------------------------------------------------ training

def _step_loss(out, batch) -> torch.Tensor:
    """CE(seg, Voronoi) + CE(seg, cluster) + BCE(heat-map, Gaussian points): the library's point loss."""
    loss = seg_loss(out.seg, torch.from_numpy(batch.maps["voronoi"]))
    loss = loss + seg_loss(out.seg, torch.from_numpy(batch.maps["cluster"]))
    return loss + heatmap_loss(out.heatmap, torch.from_numpy(batch.heatmap))


def time_training(params: Params, images: list[TrainingImage], variant: str, *, steps: int, warmup: int,
                  seed: int = 0) -> dict:
    """Median step times of one variant (module docstring); ``compile`` compiles the model first."""
    tp = params.train
    torch.manual_seed(seed)
    net = build_from_spec(model_spec(params.model, NUM_CLASSES))
    if variant == "channels_last":
        net = net.to(memory_format=torch.channels_last)
    compile_s = None
    if variant == "compile":
        t = time.perf_counter()
        net = torch.compile(net)
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=tp.lr, weight_decay=tp.weight_decay)
    rng = np.random.default_rng([seed, 0])
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(variant == "deterministic", warn_only=True)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if variant == "bf16_autocast" else contextlib.nullcontext()
    data, compute, losses = [], [], []
    try:
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            batch = sample_batch(images, rng, batch_size=tp.batch_size, patch_px=tp.patch_px,
                                 jitter=tp.intensity_jitter)
            t1 = time.perf_counter()
            with autocast:
                out = net(torch.from_numpy(batch.x))
                loss = _step_loss(out, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            t2 = time.perf_counter()
            losses.append(float(loss.detach()))
            if variant == "compile" and i == 0:
                compile_s = t2 - t
            if i >= warmup:
                data.append(t1 - t0)
                compute.append(t2 - t1)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    data_ms, compute_ms = 1e3 * statistics.median(data), 1e3 * statistics.median(compute)
    row = {"data_ms": round(data_ms, 2), "compute_ms": round(compute_ms, 2),
           "crops_per_s": round(tp.batch_size / ((data_ms + compute_ms) / 1e3), 3),
           "compute_crops_per_s": round(tp.batch_size / (compute_ms / 1e3), 3),
           "first_loss": losses[0], "timed_steps": steps}
    if compile_s is not None:
        row["compile_and_first_step_s"] = round(compile_s, 1)
    return row


def bf16_supported() -> str | None:
    """None when bf16 autocast runs a convolution on this CPU with native bf16 instructions, else why not.

    Without avx512_bf16 / AMX, torch emulates bf16 (5-8x slower than fp32 in --quick runs on such a CPU), so
    the variant is skipped there unless ``NUCLEATE_BENCH_BF16=1``.
    """
    if not machine()["cpu_bf16"] and os.environ.get("NUCLEATE_BENCH_BF16") != "1":
        return "skipped: no native bf16 on this CPU (avx512_bf16 / amx_bf16); NUCLEATE_BENCH_BF16=1 runs it emulated"
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.functional.conv2d(torch.ones(1, 3, 8, 8), torch.ones(4, 3, 3, 3)).sum().item()
    except Exception as exc:  # noqa: BLE001 - any failure means "not supported here"
        return f"unsupported: {type(exc).__name__}: {exc}"
    return None


def compile_variant(args: argparse.Namespace) -> dict | str:
    """The ``compile`` variant in a subprocess (this script, ``--only-compile``) stopped after the time limit."""
    cmd = [sys.executable, __file__, "--only-compile", "--params", str(args.params), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--images", str(args.images), "--image-px", str(args.image_px)]
    cmd += ["--threads", str(torch.get_num_threads())]
    cmd += ["--quick"] if args.quick else []
    cmd += ["--sample", str(args.sample)] if args.sample else []
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True)
        try:
            # the child prints "ready" once torch is imported and its data prepared: the clock starts then
            started = select.select([proc.stdout], [], [], STARTUP_LIMIT_S)[0]
            if not started or proc.stdout.readline().strip() != "ready":
                proc.kill()
                proc.wait()
                errors.seek(0)
                return f"unavailable: the compile subprocess did not start ({_last_line(errors.read())})"
            stdout, _ = proc.communicate(timeout=args.compile_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return f"unavailable: not done within --compile-timeout {args.compile_timeout:g} s (compilation included)"
        errors.seek(0)
        if proc.returncode != 0:
            return f"unavailable: {_last_line(errors.read())}"
    return json.loads(stdout)


def _last_line(text: str) -> str:
    return (text.strip().splitlines() or ["no output"])[-1][:300]


def training_section(args: argparse.Namespace, params: Params, images: list[TrainingImage]) -> dict:
    out: dict = {}
    why_not_bf16 = bf16_supported()
    for variant in VARIANTS:
        if variant == "bf16_autocast" and why_not_bf16:
            out[variant] = why_not_bf16
            continue
        out[variant] = time_training(params, images, variant, steps=args.steps, warmup=args.warmup)
    out["compile"] = compile_variant(args) if args.compile_timeout > 0 else "skipped (--compile-timeout 0)"
    base = out["baseline"]
    ratios, agreement = {}, {}
    for name, row in out.items():
        if name != "baseline" and isinstance(row, dict):
            ratios[f"{name}/baseline"] = round(row["crops_per_s"] / base["crops_per_s"], 3)
            ratios[f"{name}/baseline_compute_only"] = round(row["compute_crops_per_s"] / base["compute_crops_per_s"],
                                                            3)
            agreement[name] = abs(row["first_loss"] - base["first_loss"])
    out["ratios"] = ratios
    out["max_abs_dloss_first_step"] = agreement
    return out


def train_loop_section(args: argparse.Namespace, params: Params, images: list[TrainingImage]) -> dict:
    """The library's train() on the CPU (its own settings: deterministic algorithms, fp32)."""
    tp = dataclasses.replace(params.train, supervision="donuseg", epochs=args.epochs,
                             steps_per_epoch=args.steps_per_epoch, kd_weight=0.0, val_every=0, device="cpu")
    dp = dataclasses.replace(params.donuseg, start_epoch=args.epochs)  # CE(Voronoi) + CE(cluster) + BCE only
    t = time.perf_counter()
    result = train(images, model=params.model, train=tp, donuseg=dp, seed=0, num_classes=NUM_CLASSES,
                   fingerprint="bench_train", progress=False)
    rows = [{k: r[k] for k in ("epoch", "loss", "crops_per_s", "seconds", "data_s", "step_s")} for r in result.history]
    later = rows[1:] or rows
    data_s, step_s = sum(r["data_s"] for r in later), sum(r["step_s"] for r in later)
    return {"epochs": tp.epochs, "steps_per_epoch": tp.steps_per_epoch, "wall_s": round(time.perf_counter() - t, 2),
            "history": rows,
            "median_crops_per_s_after_first_epoch": round(statistics.median(r["crops_per_s"] for r in later), 2),
            "data_fraction_after_first_epoch": round(data_s / max(1e-9, data_s + step_s), 4)}


# ----------------------------------------------------------------------------------------- inference

def baseline_predict(net: torch.nn.Module, x: np.ndarray, window_px: int, overlap: float) -> np.ndarray:
    """Plain sliding window: one fp32 eager forward per window (batch 1, no_grad), probabilities averaged."""
    _, height, width = x.shape
    stride = max(1, round(window_px * (1.0 - overlap)))

    def starts(size: int) -> list[int]:
        return [0] if size <= window_px else sorted({*range(0, size - window_px, stride), size - window_px})

    fg = np.zeros((height, width), np.float32)
    count = np.zeros((height, width), np.float32)
    tensor = torch.from_numpy(x)
    net.eval()
    with torch.no_grad():
        for r in starts(height):
            for c in starts(width):
                out = net(tensor[None, :, r:r + window_px, c:c + window_px])
                fg[r:r + window_px, c:c + window_px] += torch.softmax(out.seg, dim=1)[0, 1].numpy()
                torch.sigmoid(out.heatmap)  # the library computes both maps
                count[r:r + window_px, c:c + window_px] += 1.0
    return fg / count


def _median_time(fn, repeat: int) -> tuple[float, object]:
    fn()  # warm-up
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def inference_section(args: argparse.Namespace, params: Params) -> dict:
    pp = params.predict
    image, _ = disk_image(args.infer_px, params.model.nucleus_radius_px, seed=99)
    x = network_input(image, 1.0)
    megapixels = x.shape[1] * x.shape[2] / 1e6
    torch.manual_seed(0)
    net = build_from_spec(model_spec(params.model, NUM_CLASSES)).eval()
    out: dict = {"image": f"{x.shape[1]}x{x.shape[2]} gray (synthetic disks)", "window_px": pp.window_px,
                 "overlap": pp.overlap, "repeats": args.infer_repeat}
    seconds, _ = _median_time(lambda: baseline_predict(net, x, pp.window_px, pp.overlap), args.infer_repeat)
    out["baseline"] = {"megapixels_per_s": round(megapixels / seconds, 4), "seconds": round(seconds, 3)}
    try:
        from nucleate.inference import predict_maps
    except ImportError as exc:
        out["library"] = (f"unavailable: nucleate.inference.predict_maps cannot be imported ({exc}); it is measured "
                          "once the inference module is merged")
        return out
    why_not_bf16 = bf16_supported()
    runs = [("predict_maps_b1", 1, False, False), (f"predict_maps_b{args.infer_batch}", args.infer_batch, False, False),
            (f"channels_last_b{args.infer_batch}", args.infer_batch, True, False),
            (f"bf16_autocast_b{args.infer_batch}", args.infer_batch, False, True)]
    reference = None
    for name, batch, channels_last, bf16 in runs:
        if bf16 and why_not_bf16:
            out[name] = why_not_bf16
            continue
        model = net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

        def run(model=model, batch=batch, autocast=autocast):
            with autocast:
                return predict_maps(model, x, window_px=pp.window_px, overlap=pp.overlap, batch_size=batch,
                                    device="cpu")

        seconds, maps = _median_time(run, args.infer_repeat)
        row = {"megapixels_per_s": round(megapixels / seconds, 4), "seconds": round(seconds, 3),
               "ratio_vs_baseline": round(out["baseline"]["seconds"] / seconds, 3)}
        if reference is None:
            reference = maps.foreground
        else:
            row["max_abs_dfg_vs_fp32"] = float(np.abs(maps.foreground - reference).max())
        out[name] = row
    net.to(memory_format=torch.contiguous_format)
    return out


# ---------------------------------------------------------------------------------------------- main

def machine() -> dict:
    flags = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        flags = next((line for line in fh if line.startswith("flags")), "")
    return {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "cpus": os.cpu_count(),
            "cpu_bf16": [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in flags],
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "device": "cpu", "load_avg_1min": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per variant (default 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2)")
    parser.add_argument("--sample", type=Path, help="sample directory: train on its pool images instead of disks")
    parser.add_argument("--images", type=int, default=None, help="training images (default 4)")
    parser.add_argument("--image-px", type=int, default=None, help="synthetic training image side (default 512)")
    parser.add_argument("--epochs", type=int, default=None, help="train(): epochs (default 3)")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="train(): steps per epoch (default 5)")
    parser.add_argument("--compile-timeout", type=float, default=None, help="seconds for the compile variant "
                        "(default 300; 0 skips it)")
    parser.add_argument("--infer-px", type=int, default=None, help="inference image side (default 1024)")
    parser.add_argument("--infer-batch", type=int, default=None, help="windows per pass (default predict.batch_size)")
    parser.add_argument("--infer-repeat", type=int, default=None, help="timed inference passes (default 3)")
    parser.add_argument("--skip-train-loop", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument("--only-compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    defaults = {"steps": 10, "warmup": 2, "images": 4, "image_px": 512, "epochs": 3, "steps_per_epoch": 5,
                "compile_timeout": 300.0, "infer_px": 1024, "infer_repeat": 3}
    if args.quick:
        defaults.update(steps=QUICK["steps"], warmup=QUICK["warmup"], images=QUICK["images"],
                        image_px=QUICK["image_px"], epochs=QUICK["epochs"], steps_per_epoch=QUICK["steps_per_epoch"],
                        compile_timeout=QUICK["compile_timeout"], infer_px=QUICK["infer_px"], infer_repeat=1)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = bench_params(args)
    if args.infer_batch is None:
        args.infer_batch = params.predict.batch_size
    images, data = training_images(params, patch_px=params.train.patch_px, count=args.images, size=args.image_px,
                                   sample=args.sample)
    if args.only_compile:
        print("ready", flush=True)
        print(json.dumps(time_training(params, images, "compile", steps=args.steps, warmup=args.warmup)))
        return
    result: dict = {
        **machine(),
        "settings": {"quick": args.quick, "model": dataclasses.asdict(params.model),
                     "batch_size": params.train.batch_size, "patch_px": params.train.patch_px,
                     "steps": args.steps, "warmup": args.warmup, "data": data,
                     "loss": "CE(seg, voronoi) + CE(seg, cluster) + BCE(heatmap, points)"},
    }
    result["training"] = training_section(args, params, images)
    if not args.skip_train_loop:
        result["train_loop"] = train_loop_section(args, params, images)
    if not args.skip_inference:
        result["inference"] = inference_section(args, params)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
