"""H&E: the student on pseudo-H&E sample data, with and without stain normalisation / the hematoxylin input.

    .venv/bin/python benchmarks/bench_he.py run [--conditions ...] [--seeds 0,1,2] [--results DIR]
    .venv/bin/python benchmarks/bench_he.py pseudomask [--results DIR]   # cluster input: image vs hematoxylin
    .venv/bin/python benchmarks/bench_he.py summary [--results DIR]      # one JSON document (mean ± sd)
    .venv/bin/python benchmarks/bench_he.py reference                    # recompute BUNDLED_REFERENCE's CIELAB stats

Data (built once under ``--data``, default a temp folder): the mnfinder sample as ``fluo`` (``nucleate
sample-data``), ``he`` (``nucleate sample-data --he``, seed 0: one stain everywhere) and ``he_shift``: pool and
gold as ``he``, every test image rendered with its own perturbed stain matrix
(:func:`nucleate.datasets.he.restained`, +-10 degrees, x[0.75, 1.25], Generator seed [0, 1]): a test set
stained in another lab. Masks and click positions are identical in all three.

``run`` trains one student per (condition, seed) on the 30 pool images with exact ground-truth clicks
(pseudo-masks from points, params.yaml's donuseg supervision, KD off) and the small CPU student of the demo
(flows.demo.CPU_SETTINGS: ~1 min of training on one core), and scores test (reporting) and gold. A
condition = data + ``stain`` params (normalise, cluster_input, student_input; reference = the bundled one).
The stain transform is :func:`nucleate.stain.apply_stain`, applied as the stages apply it: pool images before
the pseudo-masks (cluster_input) and before training (student_input); test / gold images before prediction.
One JSON file per run in ``--results`` (default benchmarks/results/bench_he); a killed batch resumes.
Scores: per-image means of pixel Dice, AJI, PQ, detection F1 (as benchmarks/student_quality.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from student_quality import _score, _split  # noqa: E402 - the scoring recipe of the student benchmarks

from flows.demo import CPU_SETTINGS  # noqa: E402
from nucleate.annotations import centroids_xy  # noqa: E402
from nucleate.config import load_params  # noqa: E402
from nucleate.datasets.he import pseudo_he, restained  # noqa: E402
from nucleate.inference import segment_image  # noqa: E402
from nucleate.io import read_image, write_image  # noqa: E402
from nucleate.metrics import segmentation_scores  # noqa: E402
from nucleate.models import LoadedModel  # noqa: E402
from nucleate.pseudomask import from_points  # noqa: E402
from nucleate.stain import apply_stain, lab_stats, macenko_normalise, resolve_reference  # noqa: E402
from nucleate.training import heatmap_trained, prepare_image, train  # noqa: E402
from tasks import sample_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: condition -> (data folder, stain overrides)
CONDITIONS = {
    "fluo": ("fluo", {}),
    "he": ("he", {}),
    "he_hema": ("he", {"cluster_input": "hematoxylin", "student_input": "hematoxylin"}),
    "shift": ("he_shift", {}),
    "shift_macenko": ("he_shift", {"normalise": "macenko"}),
    "shift_reinhard": ("he_shift", {"normalise": "reinhard"}),
    "shift_hema": ("he_shift", {"cluster_input": "hematoxylin", "student_input": "hematoxylin"}),
    "shift_macenko_hema": ("he_shift", {"normalise": "macenko", "cluster_input": "hematoxylin",
                                        "student_input": "hematoxylin"}),
}
METRICS = ("dice", "aji", "pq", "f1")


def build_data(data: Path) -> Path:
    """fluo / he / he_shift sample folders under ``data`` (kept; built only when missing)."""
    if not (data / "fluo").is_dir():
        sample_data.run(out=data / "fluo", install=False)
    if not (data / "he").is_dir():
        sample_data.run(out=data / "he", install=False, he=True, he_seed=0)
    shift = data / "he_shift"
    if not shift.is_dir():
        tmp = data / "he_shift.tmp"
        sample_data.run(out=tmp, install=False, he=True, he_seed=0)
        rng = np.random.default_rng([0, 1])
        for path in sorted((tmp / "images" / "test").glob("*.tif")):
            gray = read_image(data / "fluo" / "images" / "test" / path.name)
            write_image(path, pseudo_he(gray, rng, restained(rng, angle_deg=10.0, strength=0.25)))
        tmp.rename(shift)  # points.parquet's test image_ids are stale here; the benchmark uses masks only
    return data


def _params(stain: dict):
    params = load_params(ROOT / "params.yaml")
    sections = {}
    for key, value in CPU_SETTINGS.items():
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = value
    replace = {s: dataclasses.replace(getattr(params, s), **v) for s, v in sections.items()}
    replace["stain"] = dataclasses.replace(params.stain, **stain)
    return dataclasses.replace(params, **replace)


def run_one(condition: str, seed: int, data: Path) -> dict:
    folder, stain = CONDITIONS[condition]
    sample = data / folder
    params = _params(stain)
    sp = params.stain
    reference = resolve_reference(sp)
    started = time.perf_counter()
    tp = dataclasses.replace(params.train, kd_weight=0.0, val_every=0)
    radius = params.pseudomask.nucleus_radius_px
    scale = params.model.nucleus_radius_px / radius
    sigma = tp.heatmap_sigma * params.model.nucleus_radius_px
    images = []
    for name, image, truth in _split(sample, "pool"):
        xy = centroids_xy(truth)[1]
        pm = from_points(apply_stain(image, sp, reference, sp.cluster_input), xy, params=params.pseudomask,
                         seed=seed)
        images.append(prepare_image(name, apply_stain(image, sp, reference, sp.student_input), scale=scale,
                                    patch_px=tp.patch_px, points_xy=xy, heatmap_sigma_px=sigma, voronoi=pm.voronoi,
                                    cluster=pm.cluster, semantic=pm.semantic))
    prepared = time.perf_counter()
    result = train(images, model=params.model, train=tp, donuseg=params.donuseg, seed=seed, num_classes=3,
                   fingerprint="bench_he", progress=False)
    trained = time.perf_counter()
    extra = {"classes": ["nucleus", "micronucleus", "background"], "nucleus_radius_px": params.model.nucleus_radius_px,
             "data_nucleus_radius_px": radius, "heatmap_trained": heatmap_trained(tp, params.donuseg)}
    loaded = LoadedModel(result.model, result.model.spec, extra)

    def predict(items):
        return [(t, segment_image(loaded, apply_stain(im, sp, reference, sp.student_input), params.predict,
                                  nucleus_radius_px=radius).labels) for _, im, t in items]

    scores = {split: _score(predict(_split(sample, split)), params) for split in ("test", "gold")}
    return {**scores, "stain": dataclasses.asdict(sp), "data": folder,
            "seconds": {"prepare": round(prepared - started, 1), "train": round(trained - prepared, 1),
                        "predict": round(time.perf_counter() - trained, 1)},
            "student": dict(CPU_SETTINGS)}


def _data(arg: str | None) -> Path:
    return build_data(Path(arg) if arg else Path(tempfile.gettempdir()) / "nucleate-bench-he")


def cmd_run(args) -> None:
    torch.set_num_threads(args.threads)
    data = _data(args.data)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for condition in args.conditions.split(","):
            path = results / f"{condition}_s{seed}.json"
            if path.exists():
                continue
            doc = {"condition": condition, "seed": seed, **run_one(condition, seed, data),
                   "machine": f"{platform.machine()} {os.cpu_count()} cpu, torch {torch.__version__}, "
                              f"{args.threads} thread(s)"}
            path.write_text(json.dumps(doc, indent=1) + "\n")
            print(f"{path.name}: test {doc['test']} ({doc['seconds']})", file=sys.stderr, flush=True)


def cmd_pseudomask(args) -> None:
    """Pseudo-mask quality (no training) on pool + gold: whole-image Dice / AJI of the pseudo-mask instances
    against the ground truth, per cluster_input, on fluo / he / he + normalisation (seed 0)."""
    data = _data(args.data)
    params = load_params(ROOT / "params.yaml")
    out = {}
    for name, folder, stain in (("fluo", "fluo", {}), ("he", "he", {}),
                                ("he_hema", "he", {"cluster_input": "hematoxylin"}),
                                ("he_macenko", "he", {"normalise": "macenko"}),
                                ("he_macenko_hema", "he", {"normalise": "macenko", "cluster_input": "hematoxylin"})):
        sp = dataclasses.replace(params.stain, **stain)
        reference = resolve_reference(sp)
        rows = []
        started = time.perf_counter()
        for split in ("pool", "gold"):
            for _, image, truth in _split(data / folder, split):
                pm = from_points(apply_stain(image, sp, reference, sp.cluster_input), centroids_xy(truth)[1],
                                 params=params.pseudomask, seed=0)
                rows.append(segmentation_scores(truth, pm.instances, params.evaluate.iou_threshold).as_dict())
        out[name] = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in ("dice", "aji", "pq")}
        out[name]["seconds"] = round(time.perf_counter() - started, 1)
        print(name, out[name], file=sys.stderr, flush=True)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "pseudomask.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


def cmd_summary(args) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(Path(args.results).glob("*_s*.json"))]
    table = {}
    for condition in CONDITIONS:
        runs = [r for r in rows if r["condition"] == condition]
        if not runs:
            continue
        entry = {"seeds": sorted(r["seed"] for r in runs)}
        for split in ("test", "gold"):
            for m in METRICS:
                v = np.array([r[split][m] for r in runs])
                entry[f"{split}_{m}"] = [round(float(v.mean()), 4),
                                         round(float(v.std(ddof=1)), 4) if len(v) > 1 else 0.0]
        entry["train_s_mean"] = round(float(np.mean([r["seconds"]["train"] for r in runs])), 1)
        table[condition] = entry
    if args.markdown:
        print("| condition | seeds | test Dice | test AJI | test PQ | test F1 | gold Dice | gold AJI |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for c, e in table.items():
            cells = [f"{e[f'test_{m}'][0]:.3f} ± {e[f'test_{m}'][1]:.3f}" for m in METRICS]
            gold = [f"{e[f'gold_{m}'][0]:.3f}" for m in ("dice", "aji")]
            print(f"| {c} | {len(e['seeds'])} | " + " | ".join(cells + gold) + " |")
        return
    print(json.dumps({"table": table, "runs": len(rows)}, indent=1))


def cmd_reference(args) -> None:
    """CIELAB mean / std of the pseudo-H&E gold split Macenko-normalised to the bundled stain vectors."""
    from nucleate.stain import BUNDLED_REFERENCE

    params = load_params(ROOT / "params.yaml")
    data = _data(args.data)
    normalised = [macenko_normalise(image, BUNDLED_REFERENCE, params.stain).reshape(-1, 3)
                  for _, image, _ in _split(data / "he", "gold")]
    mean, std = lab_stats(np.concatenate(normalised)[None])
    print(json.dumps({"lab_mean": np.round(mean, 4).tolist(), "lab_std": np.round(std, 4).tolist()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    default_results = str(ROOT / "benchmarks/results/bench_he")
    for name in ("run", "pseudomask", "summary", "reference"):
        p = sub.add_parser(name)
        p.add_argument("--data", help="folder for the fluo / he / he_shift sample layouts (kept between runs)")
        p.add_argument("--results", default=default_results)
        if name == "run":
            p.add_argument("--conditions", default=",".join(CONDITIONS))
            p.add_argument("--seeds", default="0,1,2")
            p.add_argument("--threads", type=int, default=1)
        if name == "summary":
            p.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    {"run": cmd_run, "pseudomask": cmd_pseudomask, "summary": cmd_summary, "reference": cmd_reference}[args.cmd](args)


if __name__ == "__main__":
    main()
