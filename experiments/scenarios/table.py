"""Collect experiment 3's summaries into tables: reward per scenario, and reaction times after events.

.venv/bin/python experiments/scenarios/table.py > experiments/scenarios/results/table.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = [
    "none",
    "drift",
    "new-model",
    "outage",
    "price-change",
    "traffic-shift",
    "delayed-feedback",
    "noisy-feedback",
]
REACTIONS = ["drift", "new-model", "outage", "price-change"]


def cell(mean: Any, half: Any, digits: int = 3) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + ("" if half is None else f" ± {half:.{digits}f}")


def main() -> None:
    data = {s: json.loads((RESULTS / s / "summary.json").read_text()) for s in SCENARIOS if (RESULTS / s).exists()}
    first = next(iter(data.values()))
    policies = [r["policy"] for r in first["results"]] + ["oracle"]
    print(
        f"Commit `{first['commit']}`; seeds {first['seeds']}; λ = {first['cost_weights'][0]:g}; "
        f"{first['n_steps']} steps per run; world `{first['env']['name']}`.\n"
    )
    print("### Mean reward (± 95% CI over seeds); best fixed model for comparison\n")
    print("| policy | " + " | ".join(data) + " |")
    print("|---|" + "---|" * len(data))
    for p in policies:
        row = []
        for s in data.values():
            r = next(x for x in s["results"] + s["oracle"] if x["policy"] == p)
            row.append(cell(r["mean_reward"], r["ci95_reward"]))
        print(f"| {p} | " + " | ".join(row) + " |")
    best = []
    for s in data.values():
        r = max(s["fixed"], key=lambda x: x["mean_reward"])
        best.append(f"{cell(r['mean_reward'], r['ci95_reward'])} ({r['policy'].removeprefix('fixed:')})")
    print("| best fixed model | " + " | ".join(best) + " |\n")
    print("### Reaction: steps after the event (window 200)\n")
    print(
        "drift, new-model, price-change: until ≥ 80% of the next 200 decisions go to the model with the best "
        "true mean reward after the event; outage: until ≤ 5% go to the failed model. Mean ± 95% CI over the "
        "seeds where it happened, `(k never)` = seeds where it did not; `final` = that model's share over the "
        "last 10% of the period after the event.\n"
    )
    present = [k for k in REACTIONS if k in data]
    print("| policy | " + " | ".join(f"{k} steps | {k} final" for k in present) + " |")
    print("|---|" + "---|---|" * len(present))
    for p in policies:
        row = []
        for k in present:
            r = next(x for x in data[k]["results"] + data[k]["oracle"] if x["policy"] == p)
            v, f = r["reaction"][k], r["reaction"][f"{k}_final_share"]
            never = f" ({v['n_missing']} never)" if v["n_missing"] else ""
            row += [cell(v["mean"], v["ci95"], 0) + never, cell(f["mean"], None, 2)]
        print(f"| {p} | " + " | ".join(row) + " |")
    print("\n### Cumulative regret against the oracle at the end of the run (reward units)\n")
    print("| policy | " + " | ".join(data) + " |")
    print("|---|" + "---|" * len(data))
    for p in policies[:-1]:
        row = []
        for s in data.values():
            r = next(x for x in s["results"] if x["policy"] == p)
            row.append(cell(r["regret_oracle"], r["ci95_regret_oracle"], 0))
        print(f"| {p} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
