"""How often a policy locks in on RouterBench's tuning split: per-seed regret and the best fixed model's share.

    .venv/bin/python experiments/learning-efficiency/lockin.py SPEC … > experiments/learning-efficiency/results/X.md

RouterBench's RouterDC *train* split (a tuning set; never what the experiment reports), λ = 0 and 10, seeds
100–131. Per policy and λ: regret per request against the best fixed model (whole stream / second half) as mean ±
standard error over seeds, the second half's median over seeds, and the runs that locked in: whole-stream regret
above 0.1 per request, with the share of traffic the best fixed model got in them, and the part of the mean second
half that the runs whose second half lost more than 0.05 per request account for (with the same share in each).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tune.py: the tuning split, mean ± SE

from tune import SETS, mean_se

from simulator.report import git_commit
from simulator.runner import Plan, simulate

ENV = SETS["routerbench-train"]
SEEDS = tuple(range(100, 132))
COST_WEIGHTS = (0.0, 10.0)
LOCKED_IN = 0.1
HALF_LOST = 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("specs", nargs="*", metavar="SPEC", help="policies to screen (default: default)")
    specs = tuple(parser.parse_args().specs) or ("default",)
    result = simulate(Plan(env=ENV, policies=specs, cost_weights=COST_WEIGHTS, seeds=SEEDS), workers=2)
    print("# Lock-in on RouterBench's tuning split\n")
    print(
        f"Command: `.venv/bin/python experiments/learning-efficiency/lockin.py {' '.join(specs)}`; "
        f"seeds {SEEDS[0]}–{SEEDS[-1]}; commit `{git_commit()}`.\n"
    )
    print(
        "| policy | λ | whole stream | second half | second half, median | "
        "runs > 0.1 per request (best fixed model's share) | "
        "of the mean second half: runs > 0.05 (best fixed model's share) |"
    )
    print("|---|---|---|---|---|---|---|")
    for spec in specs:
        for lam in COST_WEIGHTS:
            runs = [r for r in result.runs if r.policy == spec and r.cost_weight == lam]
            whole = np.array([r.regret_per_request for r in runs])
            half = np.array([r.regret_per_request_second_half for r in runs])
            locked = [r for r in runs if r.regret_per_request > LOCKED_IN]
            shares = ", ".join(f"seed {r.seed}: {r.model_shares.get(r.best_fixed, 0.0):.2f}" for r in locked)
            lost = [r for r in runs if r.regret_per_request_second_half > HALF_LOST]
            bad = half[half > HALF_LOST]
            lost_shares = ", ".join(f"seed {r.seed}: {r.model_shares.get(r.best_fixed, 0.0):.2f}" for r in lost)
            print(
                f"| {spec} | {lam:g} | {mean_se(whole)} | {mean_se(half)} | {np.median(half):+.4f} | "
                f"{len(locked)} of {len(runs)}{' (' + shares + ')' if locked else ''} | "
                f"{bad.sum() / len(half):+.4f} ({len(bad)} runs{': ' + lost_shares if lost else ''}) |"
            )


if __name__ == "__main__":
    main()
