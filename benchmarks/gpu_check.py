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
import json
import platform
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", choices=sorted(CHECKS), help="checks to run (default: all)")
    parser.add_argument("--images", type=int, default=32, help="images per timing pass")
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
