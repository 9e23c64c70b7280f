"""ActiveKD on scikit-learn digits: does PCoreSet pick better images to label than random, entropy and coreset?

Protocol (methods.md §2.5-2.9, scaled down to a dataset that ships offline with scikit-learn):

* **data** — 1,797 8×8 digit images, 10 classes. Per seed: 30 % stratified test split; a disjoint teacher set of
  5 images per class; the rest (≈1,207) is the pool.
* **teacher** — fixed for the whole run: multinomial logistic regression fitted on the teacher set; its logits
  (``decision_function``) are distilled. Its test accuracy is reported.
* **student** — DHO-style MLP 64 → 128 (ReLU) → 64 (GELU; the "penultimate features") with a CE head and a KD
  head; prediction p = ½ softmax(z_ce) + ½ softmax(z_kd). Re-initialised every round (as in the reference code).
  Loss = ½ CE(z_ce(x_l), y) + ½ T² [KL(t(x_l)/T ‖ z_kd(x_l)/T) + KL(t(x_u)/T ‖ z_kd(x_u)/T)], T = 2;
  AdamW lr 1e-3, 64 labeled + 64 unlabeled per step, 10 % linear warm-up then linear decay, ``--steps`` steps.
* **active learning** — start from 1 labeled image per class; 10 rounds × 10 queries; 5 seeds. Strategies:
  ``random``, ``entropy`` (student p), ``coreset`` (student features, cosine), ``pcoreset_teacher`` (teacher
  probabilities) and ``pcoreset_student`` (student p, the reference code's choice). All selection goes through
  :func:`nucleate.selection.select`.

Output: JSON on stdout (per strategy: mean and std of test accuracy per round; per seed curves; the mean over
rounds 1-10 and its paired difference to random), plus a PNG plot and the JSON in ``--out`` (default
``benchmarks/results``) when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from nucleate.selection import select  # noqa: E402

STRATEGIES = ("random", "entropy", "coreset", "pcoreset_teacher", "pcoreset_student")
T = 2.0


class Student(nn.Module):
    """MLP with shared trunk and two heads (CE and KD), as the DHO student of methods.md §2.4."""

    def __init__(self, n_in: int = 64, n_classes: int = 10):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(n_in, 128), nn.ReLU(), nn.Linear(128, 64), nn.GELU())
        self.ce = nn.Linear(64, n_classes)
        self.kd = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.ce(h), self.kd(h), h


def train_student(x_l, y_l, t_l, x_u, t_u, *, steps: int, seed: int) -> Student:
    gen = torch.Generator().manual_seed(seed)
    model = Student()
    for layer in model.modules():  # nn.Linear's default init, drawn from our generator (no global seed)
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)
            bound = 1 / math.sqrt(layer.in_features)
            nn.init.uniform_(layer.bias, -bound, bound, generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
    for _ in range(steps):
        il = torch.randint(len(x_l), (64,), generator=gen)
        iu = torch.randint(len(x_u), (64,), generator=gen)
        zc_l, zk_l, _ = model(x_l[il])
        _, zk_u, _ = model(x_u[iu])
        kd = (F.kl_div(F.log_softmax(zk_l / T, 1), F.log_softmax(t_l[il] / T, 1), log_target=True,
                       reduction="batchmean")
              + F.kl_div(F.log_softmax(zk_u / T, 1), F.log_softmax(t_u[iu] / T, 1), log_target=True,
                         reduction="batchmean"))
        loss = 0.5 * F.cross_entropy(zc_l, y_l[il]) + 0.5 * T * T * kd
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model


@torch.no_grad()
def predict(model: Student, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    zc, zk, h = model(x)
    p = 0.5 * F.softmax(zc, 1) + 0.5 * F.softmax(zk, 1)
    p = p / p.sum(1, keepdim=True)
    return p.double().numpy(), h.double().numpy()


def run_seed(seed: int, strategy: str, *, rounds: int, queries: int, steps: int) -> dict:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=0.3, stratify=y, random_state=seed)
    rng = np.random.default_rng(seed)
    teacher_set = np.concatenate([rng.choice(rest[y[rest] == c], 5, replace=False) for c in range(10)])
    pool = np.setdiff1d(rest, teacher_set)
    teacher = LogisticRegression(max_iter=2000).fit(x[teacher_set], y[teacher_set])
    t_logits = teacher.decision_function(x).astype(np.float32)
    t_probs = teacher.predict_proba(x)
    teacher_acc = float((teacher.predict(x[test]) == y[test]).mean())

    # initial labeled set: one per class (positions into `pool`); same for every strategy of this seed
    labeled = [int(rng.choice(np.flatnonzero(y[pool] == c))) for c in range(10)]
    xt, yt, tt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(t_logits)
    accs = []
    for r in range(rounds + 1):
        lab = pool[labeled]
        unl = np.setdiff1d(pool, lab)
        model = train_student(xt[lab], yt[lab], tt[lab], xt[unl], tt[unl], steps=steps, seed=seed * 1000 + r)
        p_test, _ = predict(model, xt[test])
        accs.append(float((p_test.argmax(1) == y[test]).mean()))
        if r == rounds:
            break
        p_pool, h_pool = predict(model, xt[pool])
        kw = {"budget": queries, "labeled": np.asarray(labeled), "seed": seed * 1000 + r}
        if strategy == "random":
            new = select("random", p_pool, **kw)
        elif strategy == "entropy":
            new = select("entropy", p_pool, **kw)
        elif strategy == "coreset":
            new = select("coreset", p_pool, features=h_pool, **kw)
        elif strategy == "pcoreset_teacher":
            new = select("pcoreset", t_probs[pool], **kw)
        elif strategy == "pcoreset_student":
            new = select("pcoreset", p_pool, **kw)
        else:
            raise ValueError(strategy)
        labeled += new.tolist()
    classes_labeled = np.bincount(y[pool[labeled]], minlength=10)
    return {"accuracy": accs, "teacher_accuracy": teacher_acc, "labeled_per_class": classes_labeled.tolist()}


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    n_lab = result["labeled"]
    for name, s in result["strategies"].items():
        mean, std = np.asarray(s["mean"]), np.asarray(s["std"])
        ax.plot(n_lab, mean, marker="o", ms=3, label=name)
        ax.fill_between(n_lab, mean - std, mean + std, alpha=0.15)
    ax.axhline(result["teacher_accuracy_mean"], color="gray", ls="--", lw=1, label="teacher (fixed)")
    ax.set_xlabel("labeled images")
    ax.set_ylabel("student test accuracy")
    ax.set_title(f"ActiveKD on sklearn digits ({len(result['seeds'])} seeds, mean ± std)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--steps", type=int, default=500, help="optimiser steps per student training")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    per = {}
    teacher_acc = []
    for strategy in args.strategies.split(","):
        runs = []
        for seed in seeds:
            res = run_seed(seed, strategy, rounds=args.rounds, queries=args.queries, steps=args.steps)
            runs.append(res)
            print(f"{strategy} seed {seed}: {[round(a, 3) for a in res['accuracy']]}", file=sys.stderr)
        acc = np.asarray([r["accuracy"] for r in runs])
        teacher_acc = [r["teacher_accuracy"] for r in runs]
        per[strategy] = {"mean": acc.mean(0).round(4).tolist(), "std": acc.std(0).round(4).tolist(),
                         "per_seed": acc.round(4).tolist(),
                         "mean_rounds_1_to_end": float(acc[:, 1:].mean().round(4)),
                         "labeled_per_class_final": [r["labeled_per_class"] for r in runs]}
    if "random" in per:
        base = np.asarray(per["random"]["per_seed"])[:, 1:].mean(1)
        for s in per.values():
            diff = np.asarray(s["per_seed"])[:, 1:].mean(1) - base
            s["vs_random_mean_rounds_1_to_end"] = {"mean": float(diff.mean().round(4)),
                                                   "std": float(diff.std().round(4)),
                                                   "seeds_better": int((diff > 0).sum())}
    result = {"benchmark": "activekd_digits", "seeds": seeds, "rounds": args.rounds, "queries": args.queries,
              "steps": args.steps, "labeled": [10 + args.queries * r for r in range(args.rounds + 1)],
              "teacher_accuracy_mean": float(np.mean(teacher_acc)), "teacher_accuracy": teacher_acc,
              "strategies": per, "wall_s": round(time.perf_counter() - started, 1),
              "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result["plot"] = str(out / "activekd_digits.png") if plot(result, out / "activekd_digits.png") else None
    (out / "activekd_digits.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
