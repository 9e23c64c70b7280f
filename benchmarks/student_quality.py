"""Student quality on the real sample data: full supervision vs points (Qu et al. 2019, DoNuSeg) vs Otsu.

    .venv/bin/python benchmarks/student_quality.py run [--sample DIR] [--conditions full,qu2019,donuseg]
        [--clicks exact,sim] [--seeds 0,1,2] [--results DIR]
    .venv/bin/python benchmarks/student_quality.py tune [--grid 0,1,2] [--seed 0]  # DoNuSeg choices, gold only
    .venv/bin/python benchmarks/student_quality.py summary [--results DIR]      # one JSON document

``run`` trains one student per (condition, clicks, seed) on the sample's 30 pool images with params.yaml's
model / train / donuseg / predict settings (one schedule for every condition; the KD term is off, no
teacher is run) and scores it on the test split (reporting) and the gold split (the only split used to
choose settings). Each run is one JSON file in ``--results`` (default benchmarks/results/student_quality),
so runs can go in parallel processes and a killed batch resumes. Conditions:

* ``full`` - ground-truth masks of the pool images (the upper bound; heat-map on their centroids);
* ``qu2019`` - Voronoi + cluster labels from the points, two cross-entropies (no heat-map: distance markers);
* ``donuseg`` - + dynamic CAM selection pseudo label, CAM-guided contrast, heat-map head;
* ``no_dcs`` / ``no_con`` / ``no_det`` - donuseg without CAM selection (stage-4 CAM) / the contrastive
  term / the heat-map head (distance markers at inference);
* ``classical`` - Otsu + distance-transform watershed (nucleate.classical), no learning, no seed.

Clicks: ``exact`` = the ground-truth centroids; ``sim`` = ``annotate-sim`` clicks (params.yaml's
labelstudio.sim_*: jitter, misses, false clicks) drawn with the run's seed. ``full`` ignores clicks.
Scores are per-image means (as Qu et al.): pixel Dice, AJI (Kumar), PQ, detection F1 (evaluate params).
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

from nucleate.annotations import centroids_xy
from nucleate.annotations.simulate import simulate_clicks
from nucleate.classical import segment_classical
from nucleate.config import load_params
from nucleate.inference import segment_image
from nucleate.io import read_image, read_labels
from nucleate.metrics import detection_f1, segmentation_scores
from nucleate.models import LoadedModel
from nucleate.pseudomask import from_points
from nucleate.training import heatmap_trained, prepare_image, train

ROOT = Path(__file__).resolve().parents[1]
CONDITIONS = {
    "full": {"train": {"supervision": "full"}},
    "qu2019": {"train": {"supervision": "qu2019"}},
    "donuseg": {"train": {"supervision": "donuseg"}},
    "no_dcs": {"train": {"supervision": "donuseg"}, "donuseg": {"cam_selection": "last"}},
    "no_con": {"train": {"supervision": "donuseg"}, "donuseg": {"lambda_con": 0.0}},
    "no_det": {"train": {"supervision": "donuseg"}, "donuseg": {"lambda_det": 0.0}},
}
METRICS = ("dice", "aji", "pq", "f1")


def _sample(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    from nucleate.datasets.mnfinder import write_sample

    out = Path(tempfile.mkdtemp(prefix="nucleate-sample-")) / "sample"
    write_sample(out)
    return out


def _split(sample: Path, split: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    return [(p.name, read_image(p), read_labels(sample / "masks" / split / p.name))
            for p in sorted((sample / "images" / split).glob("*.tif"))]


def _clicks(truth: np.ndarray, kind: str, rng: np.random.Generator, params) -> np.ndarray:
    _, xy = centroids_xy(truth)
    if kind == "exact":
        return xy
    ls = params.labelstudio
    sim = simulate_clicks(xy, ["nucleus"] * len(xy), truth.shape[1], truth.shape[0], rng, jitter_px=ls.sim_jitter_px,
                          miss_rate=ls.sim_miss_rate, false_click_rate=ls.sim_false_click_rate)
    return np.asarray(sim.xy, np.float64).reshape(-1, 2)


def _score(pairs, params) -> dict[str, float]:
    rows = []
    for truth, pred in pairs:
        s = segmentation_scores(truth, pred, params.evaluate.iou_threshold).as_dict()
        s["f1"] = detection_f1(centroids_xy(truth)[1], centroids_xy(pred)[1], params.evaluate.match_radius_px)
        rows.append(s)
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in ("dice", "aji", "object_dice", "pq", "dq",
                                                                          "sq", "f1")}


def run_one(condition: str, clicks: str, seed: int, sample: Path, params, *, extra_donuseg: dict | None = None,
            splits: tuple[str, ...] = ("test", "gold")) -> dict:
    started = time.perf_counter()
    gold, test = _split(sample, "gold"), _split(sample, "test")
    radius = params.pseudomask.nucleus_radius_px
    if condition == "classical":
        return {"test": _score([(t, segment_classical(im, radius)) for _, im, t in test], params),
                "gold": _score([(t, segment_classical(im, radius)) for _, im, t in gold], params),
                "seconds": round(time.perf_counter() - started, 1)}
    over = CONDITIONS[condition]
    tp = dataclasses.replace(params.train, kd_weight=0.0, val_every=0, **over.get("train", {}))
    dp = dataclasses.replace(params.donuseg, **{**over.get("donuseg", {}), **(extra_donuseg or {})})
    scale = params.model.nucleus_radius_px / radius
    sigma = tp.heatmap_sigma * params.model.nucleus_radius_px
    rng = np.random.default_rng([seed, 7])
    images, n_points = [], 0
    for name, image, truth in _split(sample, "pool"):
        if tp.supervision == "full":
            xy = centroids_xy(truth)[1]
            item = prepare_image(name, image, scale=scale, patch_px=tp.patch_px, points_xy=xy,
                                 heatmap_sigma_px=sigma, truth=truth)
        else:
            xy = _clicks(truth, clicks, rng, params)
            pm = from_points(image, xy, params=params.pseudomask, seed=seed)
            item = prepare_image(name, image, scale=scale, patch_px=tp.patch_px, points_xy=xy,
                                 heatmap_sigma_px=sigma, voronoi=pm.voronoi, cluster=pm.cluster, semantic=pm.semantic)
        n_points += len(xy)
        images.append(item)
    prepared = time.perf_counter()
    result = train(images, model=params.model, train=tp, donuseg=dp, seed=seed, num_classes=3,
                   fingerprint="benchmark", progress=False)
    trained = time.perf_counter()
    extra = {"classes": ["nucleus", "micronucleus", "background"], "nucleus_radius_px": params.model.nucleus_radius_px,
             "data_nucleus_radius_px": radius, "heatmap_trained": heatmap_trained(tp, dp)}
    loaded = LoadedModel(result.model, result.model.spec, extra)
    def predict(items):
        return [(t, segment_image(loaded, im, params.predict, nucleus_radius_px=radius).labels) for _, im, t in items]
    return {
        **{split: _score(predict(items), params) for split, items in (("test", test), ("gold", gold))
           if split in splits},
        "points": n_points, "final_loss": result.history[-1]["loss"], "donuseg_last_refresh": result.donuseg,
        "seconds": {"prepare": round(prepared - started, 1), "train": round(trained - prepared, 1),
                    "predict": round(time.perf_counter() - trained, 1)},
        "train": dataclasses.asdict(tp), "donuseg": dataclasses.asdict(dp), "model": dataclasses.asdict(params.model),
    }


def cmd_run(args) -> None:
    params = load_params(ROOT / "params.yaml")
    torch.set_num_threads(args.threads)
    sample = _sample(args.sample)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for condition in args.conditions.split(","):
            for clicks in args.clicks.split(","):
                if condition in ("full", "classical") and clicks != "exact":
                    continue
                if condition == "classical" and seed != 0:
                    continue
                path = results / f"{condition}_{clicks}_s{seed}.json"
                if path.exists():
                    continue
                doc = {"condition": condition, "clicks": clicks, "seed": seed,
                       **run_one(condition, clicks, seed, sample, params),
                       "machine": f"{platform.machine()} {os.cpu_count()} cpu, torch {torch.__version__}, "
                                  f"{args.threads} thread(s)"}
                path.write_text(json.dumps(doc, indent=1) + "\n")
                print(f"{path.name}: test {doc['test']}", file=sys.stderr, flush=True)


#: the DoNuSeg choices tried on the gold split (never test): each a dict of donuseg overrides
GRID = [
    {},
    {"cam_threshold": 0.3},
    {"lambda_p": 0.5},
    {"pseudo_label": "replace"},
    {"similarity": "iou"},
    {"lambda_con": 0.5},
]


def cmd_tune(args) -> None:
    """DoNuSeg settings on the gold split only (exact clicks, one seed): one JSON file per setting."""
    params = load_params(ROOT / "params.yaml")
    torch.set_num_threads(args.threads)
    sample = _sample(args.sample)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for i in [int(k) for k in args.grid.split(",")]:
        path = results / f"tune_{i}.json"
        if path.exists():
            continue
        doc = {"overrides": GRID[i], "seed": args.seed,
               **run_one("donuseg", "exact", args.seed, sample, params, extra_donuseg=GRID[i], splits=("gold",))}
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"{path.name}: {GRID[i]} gold {doc['gold']}", file=sys.stderr, flush=True)


def cmd_summary(args) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(Path(args.results).glob("*.json"))
            if not p.name.startswith("tune_")]
    tuning = [json.loads(p.read_text()) for p in sorted(Path(args.results).glob("tune_*.json"))]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(f"{r['condition']}/{r['clicks']}", []).append(r)
    table = {}
    for key, runs in sorted(groups.items()):
        entry = {"seeds": sorted(r["seed"] for r in runs)}
        for split in ("test", "gold"):
            for m in (*METRICS, "object_dice", "dq", "sq"):
                values = np.array([r[split][m] for r in runs])
                entry[f"{split}_{m}"] = [round(float(values.mean()), 4), round(float(values.std(ddof=1)), 4)
                                         if len(values) > 1 else 0.0]
        train_s = [r["seconds"]["train"] for r in runs if isinstance(r["seconds"], dict)]
        entry["train_s_mean"] = round(float(np.mean(train_s)), 1) if train_s else None
        table[key] = entry
    goals = {}
    full, don, qu, cls = (table.get(k) for k in ("full/exact", "donuseg/exact", "qu2019/exact", "classical/exact"))
    if full and don:
        goals["donuseg_over_full_dice"] = round(don["test_dice"][0] / full["test_dice"][0], 3)
        goals["donuseg_over_full_aji"] = round(don["test_aji"][0] / full["test_aji"][0], 3)
    if don and qu and cls:
        goals["order_aji_donuseg_qu_classical"] = [don["test_aji"][0], qu["test_aji"][0], cls["test_aji"][0]]
    tune = [{"overrides": t["overrides"], **{m: t["gold"][m] for m in METRICS}} for t in tuning]
    if args.markdown:
        print("| condition | clicks | seeds | Dice | AJI | PQ | detection F1 | gold Dice | gold AJI |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for key, e in table.items():
            condition, clicks = key.split("/")
            cells = [f"{e[f'test_{m}'][0]:.3f}" + (f" ± {e[f'test_{m}'][1]:.3f}" if len(e["seeds"]) > 1 else "")
                     for m in METRICS]
            gold = [f"{e[f'gold_{m}'][0]:.3f}" for m in ("dice", "aji")]
            print(f"| {condition} | {clicks} | {len(e['seeds'])} | " + " | ".join(cells + gold) + " |")
        print(json.dumps({"goals": goals, "tune_gold": tune}, indent=1))
        return
    print(json.dumps({"table": table, "goals": goals, "runs": len(rows), "tune_gold": tune}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run_p = sub.add_parser("run")
    run_p.add_argument("--sample")
    run_p.add_argument("--conditions", default="classical,full,qu2019,donuseg,no_dcs,no_con,no_det")
    run_p.add_argument("--clicks", default="exact,sim")
    run_p.add_argument("--seeds", default="0,1,2")
    run_p.add_argument("--threads", type=int, default=1)
    run_p.add_argument("--results", default=str(ROOT / "benchmarks/results/student_quality"))
    tune_p = sub.add_parser("tune")
    tune_p.add_argument("--sample")
    tune_p.add_argument("--grid", default=",".join(str(i) for i in range(len(GRID))))
    tune_p.add_argument("--seed", type=int, default=0)
    tune_p.add_argument("--threads", type=int, default=1)
    tune_p.add_argument("--results", default=str(ROOT / "benchmarks/results/student_quality"))
    sum_p = sub.add_parser("summary")
    sum_p.add_argument("--results", default=str(ROOT / "benchmarks/results/student_quality"))
    sum_p.add_argument("--markdown", action="store_true", help="the BENCHMARKS.md table instead of JSON")
    args = parser.parse_args()
    {"run": cmd_run, "tune": cmd_tune, "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    main()
