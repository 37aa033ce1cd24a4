"""Tuning helper for learned escalation: learned variants against the threshold sweep on chosen setups, λ and
judges, on the tuning seeds (never the reported ones).

    nice .venv/bin/python experiments/cascade/tune.py --envs routellm-online --lams 3,30 --judges 0.8 \
        --variants "base=;v2=v=0.2" [--per-seed]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from run import JUDGE_PRICE, SETUPS, THRESHOLDS  # noqa: E402

from simulator.runner import Plan, simulate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--envs", default="routellm-online")
    parser.add_argument("--seeds", default="100,101,102")
    parser.add_argument("--lams", default="")
    parser.add_argument("--judges", default="0.7,0.8,0.9")
    parser.add_argument("--variants", default="base=")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--per-seed", action="store_true", help="also each seed's gap (same best threshold)")
    args = parser.parse_args()
    seeds = tuple(int(s) for s in args.seeds.split(","))
    judges = [float(j) for j in args.judges.split(",")]
    variants = [v.split("=", 1) for v in args.variants.split(";")]
    for name in args.envs.split(","):
        setup = SETUPS[name]
        lams = tuple(float(x) for x in args.lams.split(",")) if args.lams else setup["cost_weights"]
        pols, labels = [], {}
        for judge in judges:
            common = f"judge={judge},judge_price={JUDGE_PRICE},models={setup['chain']}"
            for t in THRESHOLDS:
                pols.append(f"cascade:threshold={t},{common}")
                labels[pols[-1]] = (judge, f"t{t}")
            for label, extra in variants:
                pols.append(f"learned-cascade:{common}" + (f",{extra}" if extra else ""))
                labels[pols[-1]] = (judge, label)
        plan = Plan(env=setup["env"], policies=tuple(pols), cost_weights=lams, seeds=seeds, warmup=setup["warmup"])
        result = simulate(plan, workers=args.workers)
        reward: dict[tuple[float, float, str], list[float]] = defaultdict(list)
        for r in sorted(result.runs, key=lambda r: r.seed):  # per-seed lists in seed order
            judge, label = labels[r.policy]
            reward[(r.cost_weight, judge, label)].append(r.mean_reward)
        print(f"## {name} seeds {list(seeds)}: learned − best threshold (per seed mean)")
        totals: dict[str, list[float]] = defaultdict(list)
        for lam in lams:
            for judge in judges:
                best_t = max(THRESHOLDS, key=lambda t: np.mean(reward[(lam, judge, f"t{t}")]))
                best = float(np.mean(reward[(lam, judge, f"t{best_t}")]))
                row = []
                for label, _ in variants:
                    gap = float(np.mean(reward[(lam, judge, label)])) - best
                    totals[label].append(gap)
                    row.append(f"{label} {gap:+.4f}")
                    if args.per_seed:  # each seed's learned − the same threshold on that seed
                        seeds_gap = np.subtract(reward[(lam, judge, label)], reward[(lam, judge, f"t{best_t}")])
                        row[-1] += " [" + " ".join(f"{g:+.4f}" for g in seeds_gap) + "]"
                print(f"λ={lam:g} judge={judge} best t={best_t}: " + "  ".join(row), flush=True)
        print(
            "mean gap: "
            + "  ".join(f"{k} {np.mean(v):+.5f} (wins {sum(g >= 0 for g in v)}/{len(v)})" for k, v in totals.items())
        )


if __name__ == "__main__":
    main()
