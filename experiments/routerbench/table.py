"""Collect experiment 2's summaries: reward per λ and AIQ per policy, and the two targets.

.venv/bin/python experiments/routerbench/table.py > experiments/routerbench/results/table.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = ("full", "scratch")
CONTEXTUAL = ("vw-", "linucb", "lints")


def contextual(policy: str) -> bool:
    return policy.startswith(CONTEXTUAL)


def pm(mean: Any, half: Any, digits: int = 4) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + ("" if half is None else f" ± {half:.{digits}f}")


def report(name: str, data: dict[str, Any]) -> None:
    lams = data["cost_weights"]
    policies = list(dict.fromkeys(r["policy"] for r in data["results"]))
    by = {(r["policy"], r["cost_weight"]): r for r in data["results"] + data["oracle"] + data["fixed"]}
    fixed = list(dict.fromkeys(r["policy"] for r in data["fixed"]))
    print(
        f"## {name}: warm-up `{data['warmup']}`, {data['n_steps']} test prompts per run, seeds {data['seeds']}, "
        f"commit `{data['commit']}`\n"
    )
    print("### Mean reward (quality − λ·cost) per λ, ± 95% CI over seeds\n")
    print("| policy | " + " | ".join(f"λ={lam:g}" for lam in lams) + " |")
    print("|---|" + "---|" * len(lams))
    for p in [*policies, "oracle"]:
        print(
            f"| {p} | "
            + " | ".join(pm(by[(p, lam)]["mean_reward"], by[(p, lam)]["ci95_reward"]) for lam in lams)
            + " |"
        )
    best_fixed = {lam: max(fixed, key=lambda f, lam=lam: by[(f, lam)]["mean_reward"]) for lam in lams}
    print(
        "| best fixed model | "
        + " | ".join(
            f"{by[(best_fixed[lam], lam)]['mean_reward']:.4f} ({best_fixed[lam].removeprefix('fixed:')})"
            for lam in lams
        )
        + " |"
    )
    bandits = [p for p in policies if contextual(p)]
    best_bandit = {lam: max(bandits, key=lambda p, lam=lam: by[(p, lam)]["mean_reward"]) for lam in lams}
    wins = []
    for lam in lams:
        b, f = by[(best_bandit[lam], lam)], by[(best_fixed[lam], lam)]
        wins.append(b["mean_reward"] > f["mean_reward"])
    print(
        "| best contextual bandit | "
        + " | ".join(f"{by[(best_bandit[lam], lam)]['mean_reward']:.4f} ({best_bandit[lam]})" for lam in lams)
        + " |"
    )
    print("| … beats the best fixed model? | " + " | ".join("**yes**" if w else "no" for w in wins) + " |\n")
    aiq = data["aiq"]["policies"]
    print(f"### AIQ ({data['aiq']['normalisation']}; c_max = {data['aiq']['c_max']:.5f} USD)\n")
    print("| policy | AIQ |")
    print("|---|---|")
    for p, v in sorted(aiq.items(), key=lambda kv: -(kv[1]["mean"] or 0)):
        print(f"| {p} | {pm(v['mean'], v['ci95'])} |")
    best = max((p for p in aiq if contextual(p) and p in policies), key=lambda p: aiq[p]["mean"])  # one setting
    ratio = aiq[best]["mean"] / aiq["classifier"]["mean"]
    print(
        f"\nTargets ({name}): the best contextual bandit beats the best fixed model at {sum(wins)} of {len(lams)} "
        f"cost weights ({'met' if all(wins) else 'not met'}); the best contextual bandit's AIQ (`{best}`, "
        f"{aiq[best]['mean']:.4f}) is {ratio:.1%} of the classifier's ({aiq['classifier']['mean']:.4f}): "
        f"{'met' if ratio >= 0.95 else 'not met'} (needs ≥ 95%).\n"
    )


def main() -> None:
    for name in RUNS:
        path = RESULTS / name / "summary.json"
        if path.exists():
            report(name, json.loads(path.read_text()))


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
