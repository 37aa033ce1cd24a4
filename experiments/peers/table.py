"""Experiment 4's table: reward and speed of our LinUCB/LinTS next to MABWiser's, per λ, and the update timing.

.venv/bin/python experiments/peers/table.py > experiments/peers/results/table.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PAIRS = (("linucb", "mabwiser-linucb"), ("lints", "mabwiser-lints"))


def main() -> None:
    for name in ("routerbench", "gsm8k"):
        data = json.loads((RESULTS / name / "summary.json").read_text())
        by = {(r["policy"], r["cost_weight"]): r for r in data["results"]}
        print(
            f"## {name}: {data['n_steps']} prompts per run, {len(data['env']['models'])} models, seeds "
            f"{data['seeds']}, commit `{data['commit']}`\n"
        )
        print("| λ | policy | reward (ours) | reward (MABWiser) | steps/s (ours) | steps/s (MABWiser) | speed-up |")
        print("|---|---|---|---|---|---|---|")
        for lam in data["cost_weights"]:
            for ours, theirs in PAIRS:
                a, b = by[(ours, lam)], by[(theirs, lam)]
                print(
                    f"| {lam:g} | {ours} | {a['mean_reward']:.4f} ± {a['ci95_reward']:.4f} | "
                    f"{b['mean_reward']:.4f} ± {b['ci95_reward']:.4f} | {a['steps_per_s']:,.0f} | "
                    f"{b['steps_per_s']:,.0f} | {a['steps_per_s'] / b['steps_per_s']:.1f}× |"
                )
        print()
    bench = json.loads((RESULTS / "bench" / "results.json").read_text())
    print(f"## Per-update time (benchmarks/bench_simulator.py, commit `{bench['commit']}`, {bench['machine']})\n")
    print("| metric | value | target | ok |")
    print("|---|---|---|---|")
    for r in bench["results"]:
        print(
            f"| {r['metric']} | {r['value']} {r.get('unit', '')} | {r.get('target') or ''} | "
            f"{ {True: 'yes', False: 'no', None: ''}[r.get('ok')] } |"
        )


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
