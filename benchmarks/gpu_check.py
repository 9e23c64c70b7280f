"""Time every GPU path in one short run and print one JSON object (run it on a CUDA machine).

Each check is a function registered with ``@check("name")`` that returns a dict of figures; add new
GPU paths (training, inference...) the same way. Without CUDA the script prints
``{"cuda": false, "note": ...}`` and exits 0, so it is safe to call anywhere.

Checks:

* ``teacher`` — ``conse`` (shipped EfficientNet-Lite0 + MiniLM weights) and a ViT-B/32-sized random
  CLIP on CUDA with fp16 autocast: images/s and tiles/s at batch 64 (best of 3, synchronised), peak
  CUDA memory, and the largest |p_cuda_fp16 - p_cpu_fp32| over a few images (agreement check).
* ``select`` — PCoreSet at N = 1e6, C = 50, k = 1,000 on CUDA vs the numpy backend: identical picks
  and distances (must be true), wall times, and k passes over the data at on-device copy bandwidth.

    python benchmarks/gpu_check.py [--only teacher] [--images 32]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
CHECKS: dict[str, Callable[[argparse.Namespace], dict]] = {}


def check(name: str) -> Callable:
    def register(fn: Callable[[argparse.Namespace], dict]) -> Callable[[argparse.Namespace], dict]:
        CHECKS[name] = fn
        return fn

    return register


def _timed(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


@check("teacher")
def teacher_check(args: argparse.Namespace) -> dict:
    from transformers.utils import logging as hf_logging

    from nucleate.teacher import load_teacher, tile_boxes
    from nucleate.teacher.clip import ClipTeacher
    from nucleate.teacher.random_clip import build_random_clip

    hf_logging.disable_progress_bar()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 4096, (768, 869), dtype=np.uint16) for _ in range(args.images)]
    few = images[:4]
    classes, templates = ("nucleus", "micronucleus", "background"), ("a fluorescence microscopy image of {}.",)
    out = {}
    model, processor = build_random_clip("vit-b-32")
    builders = {
        "conse": lambda device: load_teacher("conse", classes=classes, templates=templates, device=device,
                                             batch_size=64),
        "clip_vit_b32_random": lambda device: ClipTeacher(model, processor, classes, templates,
                                                          name="random-vit-b-32", device=device, batch_size=64),
    }
    for name, build in builders.items():
        reference = build("cpu").predict_proba(few)  # fp32 on the CPU
        gpu = build("cuda")
        agreement = float(np.abs(gpu.predict_proba(few) - reference).max())
        torch.cuda.reset_peak_memory_stats()
        calls = gpu.model_calls
        seconds = _timed(lambda gpu=gpu: gpu.predict_proba(images))
        passes = (gpu.model_calls - calls) // 3
        tiles = sum(len(tile_boxes(*im.shape[:2], gpu.tile, gpu.max_tiles)) for im in images)
        out[name] = {
            "precision": "fp16 autocast",
            "images": len(images),
            "tiles": tiles,
            "forward_passes": passes,
            "images_per_s": len(images) / seconds,
            "tiles_per_s": tiles / seconds,
            "peak_cuda_mem_mb": torch.cuda.max_memory_allocated() / 2**20,
            "max_abs_diff_vs_cpu_fp32": agreement,
        }
        del gpu
        torch.cuda.empty_cache()
    return out


@check("select")
def select_check(args: argparse.Namespace) -> dict:
    """PCoreSet (N = 1e6, C = 50, k = 1,000, cold start) on CUDA vs the numpy backend on this machine's CPU:
    identical picks and distances, wall times, and the device bound (k passes at on-device copy bandwidth)."""
    from nucleate.selection import select_scored

    n, c, k = 1_000_000, 50, 1000
    cols = np.random.default_rng(0).standard_gamma(1.0, size=(c, n), dtype=np.float32)
    cols /= cols.sum(axis=0, dtype=np.float32)
    probs = cols.T  # float32, Fortran-ordered: no conversion copy
    t = time.perf_counter()
    ref = select_scored("pcoreset", probs, budget=k)
    numpy_s = time.perf_counter() - t
    select_scored("pcoreset", probs, budget=5, backend="torch", device="cuda")  # warm-up (CUDA context, kernels)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    got = select_scored("pcoreset", probs, budget=k, backend="torch", device="cuda")
    cuda_s = time.perf_counter() - t
    src = torch.empty(256 * 2**20 // 4, device="cuda")
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 4 / _timed(lambda: dst.copy_(src))
    return {
        "N": n, "C": c, "k": k,
        "numpy_cpu_s": numpy_s,
        "cuda_s": cuda_s,
        "cuda_bound_s": k * probs.nbytes / bandwidth,
        "cuda_copy_bandwidth_gbs": bandwidth / 1e9,
        "peak_cuda_mem_mb": torch.cuda.max_memory_allocated() / 2**20,
        "same_picks": bool(np.array_equal(ref.indices, got.indices)),
        "same_distances": bool(np.array_equal(ref.scores, got.scores, equal_nan=True)),
    }


class BusySampler:
    """SM utilisation (% of the sample period a kernel ran) of the first visible GPU every ``interval_s``.

    pynvml when importable, else ``nvidia-smi --query-gpu=utilization.gpu -lms`` as a subprocess; use as a
    context manager (``start`` / ``stop`` also work) and read :meth:`summary`.
    """

    def __init__(self, interval_s: float = 0.2):
        self.interval_s = interval_s
        self.samples: list[float] = []
        self.source = "unavailable"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
        self._device = visible  # an index or a GPU UUID: both are what nvml / nvidia-smi call it

    def start(self) -> BusySampler:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = (pynvml.nvmlDeviceGetHandleByIndex(int(self._device)) if self._device.isdigit()
                      else pynvml.nvmlDeviceGetHandleByUUID(self._device))
            self.source = "pynvml"

            def poll() -> None:
                while not self._stop.wait(self.interval_s):
                    self.samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))

        except Exception:  # noqa: BLE001 - no pynvml (or no NVML): fall back to nvidia-smi
            try:
                self._proc = subprocess.Popen(
                    ["nvidia-smi", f"--id={self._device}", "--query-gpu=utilization.gpu",
                     "--format=csv,noheader,nounits", f"--loop-ms={round(self.interval_s * 1000)}"],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            except OSError:
                return self
            self.source = "nvidia-smi"
            proc = self._proc

            def poll() -> None:
                for line in proc.stdout:  # type: ignore[union-attr]
                    if self._stop.is_set():
                        break
                    try:
                        self.samples.append(float(line.strip()))
                    except ValueError:
                        continue

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.source == "pynvml":
            import pynvml

            if self._thread is not None:
                self._thread.join(timeout=5)
            pynvml.nvmlShutdown()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> BusySampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def summary(self, goal_pct: float = 70.0) -> dict:
        mean = statistics.fmean(self.samples) if self.samples else None
        return {"source": self.source, "samples": len(self.samples), "interval_s": self.interval_s,
                "mean_busy_pct": None if mean is None else round(mean, 1),
                "median_busy_pct": statistics.median(self.samples) if self.samples else None,
                "goal_busy_pct": goal_pct, "goal_met": None if mean is None else mean >= goal_pct}


class _TrainBench:
    """Real :func:`nucleate.training.train` runs on CUDA with per-run figures (module docstring: ``train``)."""

    def __init__(self, args: argparse.Namespace):
        from bench_train import training_images

        from nucleate.config import load_params

        self.args = args
        self.params = load_params(ROOT / "params.yaml")
        self._training_images = training_images
        self._images: dict[int, tuple[list, dict]] = {}
        self.device = "cuda"  # "cpu" only for a dry run of this code without a GPU

    def images(self, patch_px: int) -> tuple[list, dict]:
        key = max(patch_px, 256)  # prepare_image pads every image to at least one crop: one set for the sweep
        if key not in self._images:
            self._images[key] = self._training_images(
                self.params, patch_px=key, count=self.args.train_images, size=self.args.train_image_px,
                sample=self.args.sample)
        return self._images[key]

    def run(self, *, epochs: int, steps: int, on_epoch_end: Callable | None = None, **train_over) -> dict:
        """One train() run; figures from its history rows after the first epoch (the warm-up)."""
        from nucleate.training import train

        tp = dataclasses.replace(self.params.train, supervision="donuseg", epochs=epochs, steps_per_epoch=steps,
                                 kd_weight=0.0, val_every=0, device=self.device, **train_over)
        dp = dataclasses.replace(self.params.donuseg, start_epoch=epochs)  # CE + CE + heat-map BCE throughout
        images, _ = self.images(tp.patch_px)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        result = train(images, model=self.params.model, train=tp, donuseg=dp, seed=0, num_classes=3,
                       fingerprint="gpu_check", progress=False, on_epoch_end=on_epoch_end)
        rows = result.history[1:] or result.history
        data_s, step_s = sum(r["data_s"] for r in rows), sum(r["step_s"] for r in rows)
        n = steps * len(rows)
        return {"batch_size": tp.batch_size, "patch_px": tp.patch_px, "amp_bf16": tp.amp,
                "channels_last": tp.channels_last, "epochs": epochs, "steps_per_epoch": steps,
                "crops_per_s": round(statistics.median(r["crops_per_s"] for r in rows), 2),
                "peak_cuda_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                "data_ms_per_step": round(1e3 * data_s / n, 2), "step_ms_per_step": round(1e3 * step_s / n, 2),
                "stall_fraction": round(data_s / max(1e-9, data_s + step_s), 4),
                "final_loss": result.history[-1]["loss"], "wall_s": round(time.perf_counter() - t, 1)}

    def run_sampled(self, *, epochs: int, steps: int, **train_over) -> dict:
        """A run with SM utilisation sampled from the end of epoch 1 (after warm-up) to the end."""
        sampler = BusySampler()

        def started(epoch: int, _model: object) -> None:
            if epoch == 1:
                sampler.start()

        try:
            row = self.run(epochs=epochs, steps=steps, on_epoch_end=started, **train_over)
        finally:
            sampler.stop()
        return {**row, "sm_busy": sampler.summary()}


def _is_oom(exc: BaseException) -> bool:
    return "out of memory" in str(exc)


@check("train")
def train_check(args: argparse.Namespace) -> dict:
    """bf16 AMP vs fp32 x channels_last, batch-size sweep with OOM stop, stall fraction, SM busy %."""
    from nucleate.training import TrainError

    bench = _TrainBench(args)
    tp = bench.params.train
    epochs = max(2, args.train_epochs)
    out: dict = {"data": bench.images(tp.patch_px)[1], "model": dataclasses.asdict(bench.params.model),
                 "loss": "CE(seg, voronoi) + CE(seg, cluster) + BCE(heatmap, points)",
                 "cudnn_benchmark": torch.backends.cudnn.benchmark}
    bench.run(epochs=1, steps=5)  # CUDA context, kernels
    precision = {}
    for amp in (True, False):
        for channels_last in (True, False):
            name = f"{'bf16_amp' if amp else 'fp32'}_{'channels_last' if channels_last else 'contiguous'}"
            precision[name] = bench.run(epochs=epochs, steps=20, amp=amp, channels_last=channels_last)
    base = precision["fp32_contiguous"]["crops_per_s"]
    out["precision"] = precision
    out["precision_ratios_vs_fp32_contiguous"] = {k: round(v["crops_per_s"] / base, 3) for k, v in precision.items()}
    sweep: dict = {}
    largest: dict = {}
    for patch in (128, 256):
        for batch in (8, 16, 32, 64, 128):
            key = f"patch{patch}_batch{batch}"
            try:
                sweep[key] = bench.run(epochs=2, steps=10, batch_size=batch, patch_px=patch)
            except (TrainError, RuntimeError) as exc:
                if not _is_oom(exc):
                    raise
                sweep[key] = "out of memory"
                torch.cuda.empty_cache()
                break
            largest[f"patch{patch}"] = batch
    out["batch_sweep"] = sweep
    out["largest_batch_that_fits"] = largest
    busy = {"params": bench.run_sampled(epochs=epochs + 1, steps=30)}
    if "patch256" in largest:
        batch = min(64, largest["patch256"])
        busy[f"patch256_batch{batch}"] = bench.run_sampled(epochs=epochs + 1, steps=15, batch_size=batch,
                                                           patch_px=256)
    out["sm_utilisation"] = busy
    out["goal_busy_pct_met_at_params"] = busy["params"]["sm_busy"]["goal_met"]
    return out


@check("infer")
def infer_check(args: argparse.Namespace) -> dict:
    """predict_maps on a 4096 x 4096 image on CUDA: fp32 vs bf16 autocast, megapixels/s and max |dfg|."""
    try:
        from nucleate.inference import predict_maps
    except ImportError as exc:
        return {"unavailable": f"nucleate.inference.predict_maps cannot be imported ({exc}); merge the inference "
                               "module first"}
    from bench_train import disk_image

    from nucleate.models import network_input
    from nucleate.training import train

    bench = _TrainBench(args)
    pp, tp = bench.params.predict, bench.params.train
    images, _ = bench.images(tp.patch_px)
    trained = train(images, model=bench.params.model, seed=0, num_classes=3, fingerprint="gpu_check",
                    progress=False, train=dataclasses.replace(tp, supervision="donuseg", epochs=2, steps_per_epoch=20,
                                                              kd_weight=0.0, val_every=0, device=bench.device),
                    donuseg=dataclasses.replace(bench.params.donuseg, start_epoch=2)).model
    size = args.infer_px
    x = network_input(disk_image(size, bench.params.model.nucleus_radius_px, seed=99)[0], 1.0)
    out: dict = {"image": f"{size}x{size} gray (synthetic disks)", "window_px": pp.window_px, "overlap": pp.overlap,
                 "model": f"trained 2 x 20 steps ({'AMP' if tp.amp else 'fp32'})"}
    reference = None
    for batch in sorted({pp.batch_size, args.infer_batch}):
        for bf16 in (False, True):
            def run(bf16: bool = bf16, batch: int = batch):
                with torch.autocast(bench.device, dtype=torch.bfloat16, enabled=bf16):
                    return predict_maps(trained, x, window_px=pp.window_px, overlap=pp.overlap, batch_size=batch,
                                        device=bench.device)

            run()  # warm-up
            torch.cuda.reset_peak_memory_stats()
            seconds = _timed(run, repeat=2)
            maps = run()
            row = {"megapixels_per_s": round(size * size / 1e6 / seconds, 2), "seconds": round(seconds, 3),
                   "peak_cuda_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
            if reference is None:
                reference = maps.foreground
            else:
                row["max_abs_dfg_vs_fp32"] = float(np.abs(maps.foreground - reference).max())
            out[f"{'bf16' if bf16 else 'fp32'}_batch{batch}"] = row
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", choices=sorted(CHECKS), help="checks to run (default: all)")
    parser.add_argument("--images", type=int, default=32, help="images per timing pass")
    parser.add_argument("--sample", type=Path, help="train / infer: sample directory (pool images) instead of disks")
    parser.add_argument("--train-images", type=int, default=8, help="train: training images")
    parser.add_argument("--train-image-px", type=int, default=1024, help="train: synthetic image side")
    parser.add_argument("--train-epochs", type=int, default=3, help="train: epochs per timed run (>= 2)")
    parser.add_argument("--infer-px", type=int, default=4096, help="infer: image side")
    parser.add_argument("--infer-batch", type=int, default=16, help="infer: windows per pass besides predict's")
    args = parser.parse_args()
    head = {"python": platform.python_version(), "torch": torch.__version__, "checks": sorted(CHECKS)}
    if not torch.cuda.is_available():
        print(json.dumps({**head, "cuda": False,
                          "note": "no CUDA device visible to torch; GPU paths not timed"}, indent=2))
        return 0
    head.update(cuda=True, device=torch.cuda.get_device_name(0), cuda_version=torch.version.cuda)
    results, failed = {}, False
    for name in args.only or sorted(CHECKS):
        t = time.perf_counter()
        try:
            results[name] = {**CHECKS[name](args), "wall_s": time.perf_counter() - t}
        except Exception as exc:  # report every check, then fail the run
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            failed = True
    print(json.dumps({**head, "results": results}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
