"""Teacher throughput on CPU: images/s for ``conse`` (shipped weights) and a ViT-B/32-sized random CLIP.

Images: N real mnfinder pool images (512x512 to 1024x1024, 8/16-bit, all sizes), scored with the
default preprocessing (224 px tiles at native resolution, at most 16 per image). For each teacher:

* ``batched`` — ``predict_proba`` on all images, ``batch_size`` tiles per forward pass (default: the
  backend's automatic CPU choice, conse 4, clip 32; best of
  ``--repeat`` passes, since other jobs may share the CPU);
* ``baseline`` (same run) — one forward pass per tile (batch 1), the naive loop; the ratio says what
  batching buys;
* ``whole_image`` — ``tile=0``: each image squashed into one 224 px input (what tiling avoids);
* ``cache_hit`` — ``score_images`` over the same ids with a warm cache (no model call);
* ``batch_sweep`` — model forward only, 32 random 224 px tiles, tiles/s at batch 1, 4, 8, 16, 32
  (how the automatic batch sizes were chosen).

Also: load time, tiles per image, tiles per CPU-second (steadier than wall time when other jobs share
the CPU; use ``--threads 1`` for a per-core figure), peak RSS. Prints one JSON object.

    python benchmarks/bench_teacher.py [--images 6] [--batch-size 0] [--threads 1] [--skip-clip]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time

import numpy as np
import torch


def _images(n: int) -> list[np.ndarray]:
    """n pool images, cycling through the distinct (shape, dtype) groups so every size is represented."""
    from nucleate.datasets.mnfinder import iter_mnfinder
    from tasks.sample_data import locate_mnfinder

    groups: dict[tuple, list[np.ndarray]] = {}
    for item in iter_mnfinder(locate_mnfinder(install=False), splits=("pool",)):
        groups.setdefault((item.image.shape, item.image.dtype.str), []).append(item.image)
    out, k = [], 0
    while len(out) < n and any(len(g) > k for g in groups.values()):
        out += [g[k] for _, g in sorted(groups.items()) if len(g) > k][: n - len(out)]
        k += 1
    return out


def _time(fn, repeat: int = 1) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of the fastest of ``repeat`` calls."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - t, time.process_time() - c))
    return best


def _measure(teacher, images: list[np.ndarray], batch_size: int, repeat: int) -> dict:
    from nucleate.teacher import ProbsCache, score_images

    batch_size = batch_size or teacher.batch_size  # 0: the backend's automatic choice for the device
    teacher.predict_proba(images[:1])  # warm-up (allocations, lazy name embeddings)
    tile = teacher.tile
    teacher.batch_size = batch_size
    calls = teacher.model_calls
    batched, batched_cpu = _time(lambda: teacher.predict_proba(images), repeat)
    passes = (teacher.model_calls - calls) // repeat  # forward passes of one batched run
    teacher.batch_size = 1
    calls = teacher.model_calls
    baseline, _ = _time(lambda: teacher.predict_proba(images), repeat)
    n_tiles = (teacher.model_calls - calls) // repeat
    teacher.batch_size = batch_size
    teacher.tile = 0
    whole, _ = _time(lambda: teacher.predict_proba(images), repeat)
    teacher.tile = tile
    ids = [f"img{i}" for i in range(len(images))]
    with tempfile.TemporaryDirectory() as tmp:
        cache = ProbsCache(tmp)
        score_images(teacher, ids, lambda i: images[int(i[3:])], cache=cache)
        calls = teacher.model_calls
        hit, _ = _time(lambda: score_images(teacher, ids, lambda i: images[int(i[3:])], cache=cache))
        assert teacher.model_calls == calls
    sweep = {}
    tiles32 = list(np.random.default_rng(0).integers(0, 256, (32, 224, 224, 3), dtype=np.uint8))
    x = teacher._prepare(tiles32)
    for bs in (1, 4, 8, 16, 32):
        def forward(bs=bs):
            with torch.inference_mode():
                for s in range(0, 32, bs):
                    teacher._embed(x[s : s + bs])
        forward()
        sweep[bs] = 32 / _time(forward, repeat)[0]
    n = len(images)
    return {
        "batch_sweep_tiles_per_s": sweep,
        "teacher_id": teacher.teacher_id,
        "images": n,
        "tiles": n_tiles,
        "tiles_per_image": n_tiles / n,
        "batch_size": batch_size,
        "forward_passes_batched": passes,
        "batched_images_per_s": n / batched,
        "batched_tiles_per_s": n_tiles / batched,
        "batched_tiles_per_cpu_s": n_tiles / batched_cpu,
        "baseline_batch1_images_per_s": n / baseline,
        "speedup_vs_batch1": baseline / batched,
        "whole_image_no_tiling_images_per_s": n / whole,
        "tiling_cost_vs_whole_image": batched / whole,
        "cache_hit_images_per_s": n / hit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=0, help="tiles per forward pass; 0: auto")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes; the best is reported")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--skip-clip", action="store_true")
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    from nucleate.teacher import load_teacher
    from nucleate.teacher.clip import ClipTeacher
    from nucleate.teacher.random_clip import build_random_clip

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    images = _images(args.images)
    classes = ("nucleus", "micronucleus", "background")
    templates = ("a fluorescence microscopy image of {}.",)
    result: dict = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        "image_shapes": sorted({f"{im.shape[0]}x{im.shape[1]} {im.dtype}" for im in images}),
    }

    t = time.perf_counter()
    conse = load_teacher("conse", classes=classes, templates=templates, device="cpu")
    result["conse"] = {"load_s": time.perf_counter() - t, **_measure(conse, images, args.batch_size, args.repeat)}
    del conse

    if not args.skip_clip:
        t = time.perf_counter()
        model, processor = build_random_clip("vit-b-32")
        clip = ClipTeacher(model, processor, classes, templates, name="random-vit-b-32", device="cpu")
        result["clip_vit_b32_random"] = {
            "build_s": time.perf_counter() - t,
            "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
            **_measure(clip, images, args.batch_size, args.repeat),
        }
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
