"""Pick one setting per policy family from the tuning run on RouterBench's training split.

Rule (fixed before the evaluated experiments ran): the highest mean reward, averaged over the cost weights
and seeds, of online runs from scratch on the training split. Writes `selected.json` and `results.md`.

    .venv/bin/python experiments/tuning/select.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def family(spec: str) -> str:
    return spec.partition(":")[0]


def main() -> None:
    data = json.loads((HERE / "results" / "summary.json").read_text())
    rewards: dict[str, list[float]] = {}
    speeds: dict[str, list[float]] = {}
    for r in data["results"]:
        rewards.setdefault(r["policy"], []).append(r["mean_reward"])
        speeds.setdefault(r["policy"], []).append(r["steps_per_s"])
    best_fixed = {}
    for r in data["fixed"]:
        best_fixed[r["cost_weight"]] = max(best_fixed.get(r["cost_weight"], -np.inf), r["mean_reward"])
    ranked = sorted(rewards, key=lambda p: -np.mean(rewards[p]))
    selected: dict[str, str] = {}
    for spec in ranked:
        selected.setdefault(family(spec), spec)
    (HERE / "selected.json").write_text(json.dumps(selected, indent=1) + "\n")
    lines = [
        f"Commit `{data['commit']}`; seeds {data['seeds']}; cost weights {data['cost_weights']}; "
        f"{data['n_steps']} steps per run (the training split, one pass, from scratch).",
        "",
        "| setting | mean reward over λ | steps/s | selected |",
        "|---|---|---|---|",
    ]
    for spec in ranked:
        mark = "**yes**" if selected[family(spec)] == spec else ""
        lines.append(f"| `{spec}` | {np.mean(rewards[spec]):.4f} | {np.mean(speeds[spec]):,.0f} | {mark} |")
    lines += ["", f"Best fixed model at each λ, averaged over λ: {np.mean(list(best_fixed.values())):.4f}."]
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(selected, indent=1))


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
