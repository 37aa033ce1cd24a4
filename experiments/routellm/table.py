"""Collect experiment 1's summaries: RouteLLM's metrics per benchmark, next to RouteLLM's published results.

.venv/bin/python experiments/routellm/table.py > experiments/routellm/results/table.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = {"mmlu": ["mmlu_defaults", "mmlu_tuned"], "gsm8k": ["gsm8k"], "mt_bench": ["mt_bench"]}
# lmsys.org/blog/2024-07-01-routellm and the RouteLLM README: cost reductions at 95% of GPT-4's quality,
# "over 85% on MT Bench, 45% on MMLU, and 35% on GSM8K"; as GPT-4 call shares ≈ 1 − reduction.
PUBLISHED = {"mmlu": (0.45, 0.55), "gsm8k": (0.35, 0.65), "mt_bench": (0.85, 0.15)}
NOT_BANDITS = {"oracle", "random", "classifier"}
KEYS = ("apgr", "apgr_trapz", "cpt50", "cpt80", "strong_share_at_95", "cost_saving_at_95")


NO_GAP_KEYS = ("apgr", "apgr_trapz", "cpt50", "cpt80")
"""The metrics that are undefined (not never reached) in a seed without a quality gap, as summary.md writes them."""


def cell(v: dict[str, Any], key: str) -> str:
    """`0.612 ± 0.031`, with the seeds where the value is missing: `(k never)` for a level never reached, and for
    PGR's metrics without a quality gap `undefined (no quality gap)`, as summary.md says."""
    missing = v["n_missing"]
    why = "no quality gap" if key in NO_GAP_KEYS else ""
    if v["mean"] is None:
        return f"undefined ({why})" if why else f"never ({missing})"
    text = f"{v['mean']:.3f}" + ("" if v["ci95"] is None else f" ± {v['ci95']:.3f}")
    if not missing:
        return text
    return text + (f" (undefined in {missing} seed(s): {why})" if why else f" ({missing} never)")


def main() -> None:
    for task, names in RUNS.items():
        summaries = [json.loads((RESULTS / n / "summary.json").read_text()) for n in names if (RESULTS / n).exists()]
        if not summaries:
            continue
        first = summaries[0]
        tm = first["two_model"]
        policies: dict[str, dict[str, Any]] = {}
        for s in summaries:
            policies.update(s["two_model"]["policies"])
        print(
            f"## {task}: {first['n_steps']} prompts per run, seeds {first['seeds']}, {len(first['cost_weights'])} "
            f"cost weights; GPT-4 quality {tm['q_strong']:.4f}, Mixtral {tm['q_weak']:.4f}; commit "
            f"`{first['commit']}`\n"
        )
        print(
            "| policy | APGR | APGR (trapezoid) | CPT(50%) | CPT(80%) | GPT-4 calls for 95% of GPT-4 quality "
            "| cost saving at 95% |"
        )
        print("|---|---|---|---|---|---|---|")
        order = sorted(policies, key=lambda p: (p != "oracle", policies[p]["strong_share_at_95"]["mean"] or 9))
        for p in order:
            print(f"| {p} | " + " | ".join(cell(policies[p][k], k) for k in KEYS) + " |")
        saving, calls = PUBLISHED[task]
        print(f"| RouteLLM, published (best router) | | | | | ≈ {calls:.2f} | {saving:.2f} |\n")
        bandits = {p: v for p, v in policies.items() if p not in NOT_BANDITS and v["strong_share_at_95"]["mean"]}
        best = min(bandits, key=lambda p: bandits[p]["strong_share_at_95"]["mean"])
        share = bandits[best]["strong_share_at_95"]["mean"]
        verdict = "fewer" if share < calls else "more"
        print(
            f"Best bandit policy: `{best}` needs {share:.3f} GPT-4 calls for 95% of GPT-4's quality: {verdict} "
            f"than RouteLLM's published ≈ {calls:.2f}.\n"
        )


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
