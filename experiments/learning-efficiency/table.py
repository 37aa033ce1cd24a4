"""Collect the learning-efficiency summaries into one table per set, with the issue's targets checked.

    .venv/bin/python experiments/learning-efficiency/table.py > experiments/learning-efficiency/results/table.md

Targets (issue 9): at every λ, the default policy's whole-stream regret per request ≤ 0.02 and second-half
regret ≤ 0 (regret against the best fixed model in hindsight at that λ); the break-even step reported; on
RouteLLM, GPT-4 calls for 95% of GPT-4's quality no worse than the previous default's 0.560 (MMLU) / 0.707
(GSM8K).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SETS = {
    "routerbench_test": "RouterBench subset, RouterDC test split (945 prompts × 11 models; held out from tuning)",
    "routerbench_full": "RouterBench subset, whole table (3,150 prompts × 11 models; contains the tuning split)",
    "synthetic": "Synthetic world: 24 models, 3 good for different prompt kinds (4,000 requests)",
    "gsm8k": "RouteLLM GSM8K (GPT-4 vs Mixtral, 1,307 prompts)",
    "mmlu": "RouteLLM MMLU (GPT-4 vs Mixtral, 14,037 prompts)",
}
TARGET_WHOLE = 0.02
TARGET_HALF = 0.0
SHOWN_LAMBDAS = 4
"""The RouteLLM sets sweep 12 λ values: the table shows 4 of them (all are in summary.json)."""


def cell(r: dict[str, Any]) -> str:
    never = r.get("break_even_never") or 0
    step = r.get("break_even_step")
    be = "never" if step is None else f"{step:.0f}"
    if never and step is not None:
        be += f" ({never} never)"
    return f"{r['regret_per_request']:+.4f} / {r['regret_per_request_second_half']:+.4f} / {be}"


def shown(lams: list[float]) -> list[float]:
    if len(lams) <= SHOWN_LAMBDAS:
        return lams
    idx = sorted({round(i * (len(lams) - 1) / (SHOWN_LAMBDAS - 1)) for i in range(SHOWN_LAMBDAS)})
    return [lams[i] for i in idx]


def report(name: str, data: dict[str, Any]) -> list[str]:
    lams = shown(data["cost_weights"])
    policies = list(dict.fromkeys(r["policy"] for r in data["results"]))
    by = {(r["policy"], r["cost_weight"]): r for r in data["results"]}
    print(f"## {SETS[name]}\n")
    print(
        f"Seeds {data['seeds']}, {data['n_steps']} requests per run, commit `{data['commit']}`, "
        f"command `{data['command']}`.\n"
    )
    print(
        "Cells: regret per request against the best fixed model in hindsight, whole stream / second half / "
        "break-even step (median over seeds). Sorted by whole-stream regret averaged over λ.\n"
    )
    print("| policy | " + " | ".join(f"λ={lam:g}" for lam in lams) + " |")
    print("|---|" + "---|" * len(lams))
    policies.sort(key=lambda p: sum(by[(p, lam)]["regret_per_request"] for lam in lams))
    for p in policies:
        print(
            f"| {'**' + p + '**' if p == 'default' else p} | " + " | ".join(cell(by[(p, lam)]) for lam in lams) + " |"
        )
    best = {lam: by[(policies[0], lam)]["best_fixed"] for lam in lams}
    print("| (best fixed model) | " + " | ".join(best[lam] for lam in lams) + " |\n")
    misses = []
    for lam in data["cost_weights"]:
        r = by[("default", lam)]
        if r["regret_per_request"] > TARGET_WHOLE or r["regret_per_request_second_half"] > TARGET_HALF:
            misses.append(f"λ={lam:g} ({r['regret_per_request']:+.4f} / {r['regret_per_request_second_half']:+.4f})")
    baseline = {lam: by.get(("thompson:dist=gaussian", lam)) for lam in data["cost_weights"]}
    ratios = [
        baseline[lam]["regret_per_request"] / by[("default", lam)]["regret_per_request"]
        for lam in data["cost_weights"]
        if baseline[lam] and by[("default", lam)]["regret_per_request"] > 0
    ]
    verdict = "met at every λ" if not misses else "missed at " + ", ".join(misses)
    print(f"Target (default: whole ≤ {TARGET_WHOLE}, second half ≤ {TARGET_HALF}, at every λ of the run): {verdict}.")
    if ratios:
        print(
            f"Where the default policy's regret is positive, the context-free Gaussian Thompson baseline's is "
            f"{min(ratios):.1f}–{max(ratios):.1f}× it."
        )
    tm = data.get("two_model")
    if tm:
        print(
            "\nGPT-4 calls for 95% of GPT-4's quality (RouteLLM's metric, over the λ sweep): "
            + ", ".join(
                f"{p} {v['strong_share_at_95']['mean']:.3f}"
                + ("" if v["strong_share_at_95"]["ci95"] is None else f" ± {v['strong_share_at_95']['ci95']:.3f}")
                for p, v in tm["policies"].items()
                if v["strong_share_at_95"]["mean"] is not None
            )
            + "."
        )
    print()
    return misses


def main() -> None:
    print("# Learning efficiency from scratch: results\n")
    print("Written by `experiments/learning-efficiency/table.py` from the `summary.json` files beside it.\n")
    for name in SETS:
        path = RESULTS / name / "summary.json"
        if path.exists():
            report(name, json.loads(path.read_text()))


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
