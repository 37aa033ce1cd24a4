"""How much can the prompt win over the best fixed model on each set? (the ceiling of issue 9's second half)

    .venv/bin/python experiments/learning-efficiency/headroom.py > experiments/learning-efficiency/results/headroom.md

Per set and λ, on the prompts a run streams (reward r = quality − λ·cost, the simulator's; expected quality
for the synthetic world):

- the best fixed model in hindsight m* = argmax_m mean(r_m) and the gap to the runner-up;
- **kind headroom** = Σ_k (n_k/n)·max_m mean_k(r_m) − mean(r_m*): what routing by prompt kind (the table's
  task, RouteLLM's subject, the world's prompt kind) would gain if the best model of every kind were known. A policy
  that learns from the prompt cannot gain more than this unless its features predict finer than the kind;
- **oracle headroom** = mean(max_m r_m) − mean(r_m*): the per-prompt oracle, an upper bound no router reaches
  (most of it is the noise of 0/1 qualities, not predictable from the prompt).

Where the kind headroom is 0 the best fixed model is the best of every kind, and a second half at or below
the best fixed model's regret (≤ 0) needs a policy that stops trying other models before the second half
starts: every request sent elsewhere there is regret that nothing wins back.
No learning, no seeds: a property of the tables.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from simulator.environments import EnvSpec  # noqa: E402
from simulator.report import git_commit  # noqa: E402

HERE = Path(__file__).resolve().parent
SETS = {
    "routerbench_test": "RouterBench subset, RouterDC test split (held out)",
    "routerbench_full": "RouterBench subset, whole table",
    "synthetic": "Synthetic, 24 models",
    "gsm8k": "RouteLLM GSM8K",
    "mmlu": "RouteLLM MMLU",
}
OPTION_KEYS = ("split", "train_value", "eval_value", "drop_flag", "prices")


def headroom(quality: np.ndarray, cost: np.ndarray, kinds: np.ndarray, lam: float) -> tuple[int, float, float, float]:
    """(best fixed model's index, gap to the runner-up, kind headroom, oracle headroom) at cost weight `lam`."""
    reward = quality - lam * cost
    means = reward.mean(axis=0)
    order = np.argsort(-means)
    best = int(order[0])
    by_kind = sum(reward[kinds == k].mean(axis=0).max() * np.sum(kinds == k) for k in np.unique(kinds))
    return (
        best,
        float(means[best] - means[order[1]]),
        float(by_kind / len(reward) - means[best]),
        float(reward.max(axis=1).mean() - means[best]),
    )


def main() -> None:
    print("# Headroom: what the prompt can win over the best fixed model\n")
    print(f"Written by `experiments/learning-efficiency/headroom.py` at commit `{git_commit()}` (no seeds: a property")
    print("of the tables). Reward = quality − λ·cost on the prompts each run streams. Kind headroom: routing by")
    print("prompt kind with the best model of every kind known; oracle headroom: the best model of every prompt.\n")
    for key, title in SETS.items():
        config = tomllib.loads((HERE / f"{key}.toml").read_text())
        options = {k: config[k] for k in OPTION_KEYS if k in config}
        if "tasks" in config:
            options["tasks"] = tuple(config["tasks"])
        if "routellm" in str(config["env"]):
            options["context_columns"] = ("subtask",)  # MMLU's 57 subjects: finer kinds than the task
        env = EnvSpec.parse(str(config["env"]), **options).build()
        rows = env.eval_rows
        quality, cost, kinds = env.quality[rows], env.cost_usd[rows], env.domains[rows]
        if env.attributes is not None:
            kinds = np.unique([str(env.attributes[r]["subtask"]) for r in rows], return_inverse=True)[1]
        print(f"## {title}\n")
        print(f"{len(rows):,} prompts × {len(env.models)} models, {len(np.unique(kinds))} prompt kinds.\n")
        print("| λ | best fixed model | gap to runner-up | kind headroom | oracle headroom |")
        print("|---|---|---|---|---|")
        for lam in config["cost_weights"]:
            best, gap, kind, oracle = headroom(quality, cost, kinds, float(lam))
            print(f"| {lam:g} | {env.models[best].name} | {gap:.4f} | {kind:+.4f} | {oracle:+.4f} |")
        print()


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
