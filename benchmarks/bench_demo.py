"""Wall time of the demo (``nucleate demo``, what ``make demo`` runs), per phase and per round step.

Runs the demo from the repository root (its own ``.demo/`` workspaces, Label Studio and Prefect; the checkout is
never committed to) and prints one JSON document: the machine (CPU count, load before the run), the phases
(setup: servers + sample + teacher scores; workspaces: ``nucleate init`` x 2; rounds: both strategies side by
side; summary), each strategy's open / annotate / close seconds per round, the sum of the two strategies' step
times against the rounds phase's wall time (how much running the two workspaces side by side saved: the
baseline is running them one after the other), and the final table (clicks vs test Dice / AJI / PQ). The demo's
own output is kept in ``.demo/demo_output.txt``.

    .venv/bin/python benchmarks/bench_demo.py [--rounds 3] [-- extra demo args, e.g. --set train.epochs=2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.evaluate import read_curve  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("extra", nargs="*", help="more `nucleate demo` arguments (after --)")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    nucleate = Path(sys.executable).with_name("nucleate")
    t0 = time.perf_counter()
    run = subprocess.run([str(nucleate), "demo", "--rounds", str(args.rounds), *args.extra], cwd=REPO,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (REPO / ".demo").mkdir(exist_ok=True)
    (REPO / ".demo" / "demo_output.txt").write_text(run.stdout)  # what a user sees (README shows it)
    if run.returncode:
        sys.exit(f"demo failed (exit {run.returncode}): {run.stderr.strip().splitlines()[-1:]}")
    timings = json.loads((REPO / ".demo" / "timings.json").read_text())
    steps = timings.pop("steps")
    per_strategy = {}
    for strategy, events in steps.items():
        rounds: dict[str, dict[str, float]] = {}
        for ev in events:
            rounds.setdefault(str(ev["round"]), {})[ev["phase"]] = ev["seconds"]
        per_strategy[strategy] = {"rounds": rounds, "total_s": round(sum(ev["seconds"] for ev in events), 1)}
    sequential = sum(s["total_s"] for s in per_strategy.values())
    table = {}
    for strategy in per_strategy:
        rows, _ = read_curve(REPO / ".demo" / strategy / "storage" / "plots" / "learning_curve.csv")
        table[strategy] = [{k: row[k] for k in ("round", "images", "clicks", "test_dice", "test_aji", "test_pq")}
                           for row in rows]
    print(json.dumps({
        "machine": {"cpus": os.cpu_count(), "load_1min_before": round(load, 2)},
        "demo_wall_s": round(wall, 1),
        "phases_s": timings,
        "strategies": per_strategy,
        "side_by_side": {"sequential_sum_s": round(sequential, 1), "rounds_phase_s": timings["rounds"],
                         "speedup": round(sequential / timings["rounds"], 2)},
        "table": table,
    }, indent=2))


if __name__ == "__main__":
    main()
