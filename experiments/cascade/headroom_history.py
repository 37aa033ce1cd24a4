"""How much an earlier model's score could add to the RouterBench chain's last decision, on the tuning seeds only
(100–102; never the reported 0–4): the best rules in hindsight on the scored prompts, on the same judge's scores as
`run.py` / `tune.py`, for the question behind `EscalationParams.history`.

    .venv/bin/python experiments/cascade/headroom_history.py     # writes results/headroom-history-tuning.md (seconds)

Chain mistral-7b → Yi-34B → GPT-4: step 0 accepts or escalates Mistral's answer on its score s₀, step 1 Yi's on its
score s₁ (rubric scores 1–10; a missing one counts as 1). Rules, each chosen per (λ, judge, seed) on the scored
prompts with their outcomes known (upper bounds, as the best threshold is; more cells fit more noise):

- *best threshold*: one t at both steps (the sweep's rule);
- *any rule per step on its own score*: per s₀ and per s₁ cell, the better action (what the learner without the
  history block can represent);
- *+ s₀ ≥ 6 at step 1*: step 1 per (s₁, whether Mistral's score was at least 6/10) — the history block's kind of
  information, coarsely (results/headroom-history-tuning.md at 6ebfd49f labels it "s₀ ≥ 5": the same split);
- *+ s₀ at step 1*: step 1 per (s₀, s₁), 100 cells;
- *placebo*: step 1 per (a random label 0…9 drawn like s₀ but independent of the prompt, s₁), 100 cells: what
  fitting that many cells in hindsight adds by chance alone.

Also, per s₁ and whether s₀ ≤ 5, on RouterDC's training split (what the warm start learns from): how often Yi's
answer is right and what escalating it to GPT-4 adds to quality (before its cost).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from run import JUDGE_PRICE, JUDGES, SETUPS  # noqa: E402

from bandit_router.cascade import parse_judge_score  # noqa: E402
from bandit_router.features import FeatureExtractor  # noqa: E402
from simulator.agents.cascades import SimulatedJudge  # noqa: E402

SEEDS = (100, 101, 102)
"""The tuning seeds (the reported ones are 0–4)."""


def scores(judge: SimulatedJudge, quality: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """The judge's rubric score − 1 (0…9) of each answer: ≥ 4.5 is a score of 6 or more."""
    return np.array([round(9 * (parse_judge_score(judge.reply_to(float(q), *d)) or 0.0))
                     for q, d in zip(quality, draws, strict=True)])  # fmt: skip


def best_per_cell(keys: np.ndarray, stay: np.ndarray, go: np.ndarray) -> np.ndarray:
    """Per prompt, the reward of the better action of its cell (`keys`): `go` where the cell's total is higher."""
    out = stay.copy()
    for key in np.unique(keys):
        cell = keys == key
        if go[cell].sum() > stay[cell].sum():
            out[cell] = go[cell]
    return out


def main() -> None:
    setup = SETUPS["routerbench"]
    env = setup["env"].build()
    m, y, g = (env.model_names.index(name) for name in setup["chain"].split(">"))
    extractor = FeatureExtractor()
    lines = [
        "RouterBench (mistral-7b → Yi-34B → GPT-4), RouterDC's test split, tuning seeds 100–102 (per-seed rules, then",
        "the mean over seeds): mean reward per request of the best fixed threshold in hindsight, and what each richer",
        "rule chosen in hindsight adds to it (`experiments/cascade/headroom_history.py`).",
        "",
        "| judge | λ | best threshold | any rule per step on its own score | + s₀ ≥ 6 at step 1 | + s₀ at step 1 "
        "| placebo |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = env.eval_rows
    tokens = np.array([env.context(int(r), extractor).input_tokens for r in rows], dtype=np.float64)
    judge_cost = JUDGE_PRICE * (tokens + 250.0) / 1e6
    q, c = env.quality[rows], env.cost_usd[rows]
    train = env.train_rows
    cells: dict[float, np.ndarray] = {}
    for accuracy in JUDGES:
        judge = SimulatedJudge(noise=SimulatedJudge.noise_for(accuracy), error=0.0)
        by_seed = []
        counts = np.zeros((2, 10, 3))  # [s₀ ≤ 5][s₁]: n, Yi right, GPT-4 − Yi
        for seed in SEEDS:
            draws = SimulatedJudge.draws(len(env.quality), len(env.model_names), seed)
            by_seed.append((scores(judge, q[:, m], draws[rows, m]), scores(judge, q[:, y], draws[rows, y])))
            s0, s1 = scores(judge, env.quality[train, m], draws[train, m]), scores(
                judge, env.quality[train, y], draws[train, y]
            )
            for low in (0, 1):
                for s in range(10):
                    cell = ((s0 < 4.5) == bool(low)) & (s1 == s)
                    counts[low, s] += [cell.sum(), env.quality[train, y][cell].sum(),
                                       (env.quality[train, g] - env.quality[train, y])[cell].sum()]  # fmt: skip
        cells[accuracy] = counts
        for lam in setup["cost_weights"]:
            results = np.zeros(5)
            for seed, (s0, s1) in zip(SEEDS, by_seed, strict=True):
                placebo = np.random.default_rng([seed, 7]).permutation(s0)  # s₀'s distribution, no prompt's
                mistral = q[:, m] - lam * (c[:, m] + judge_cost)
                yi = q[:, y] - lam * (c[:, m] + c[:, y] + 2 * judge_cost)
                gpt4 = q[:, g] - lam * (c[:, m] + c[:, y] + c[:, g] + 2 * judge_cost)
                best = max(float(np.mean(np.where(s0 >= t, mistral, np.where(s1 >= t, yi, gpt4)))) for t in range(11))

                def value(step1: np.ndarray, s0: np.ndarray = s0, mistral: np.ndarray = mistral) -> float:
                    return float(np.mean(best_per_cell(s0, mistral, step1)))

                results += [best, value(best_per_cell(s1, yi, gpt4)) - best,
                            value(best_per_cell(10 * (s0 >= 4.5) + s1, yi, gpt4)) - best,
                            value(best_per_cell(10 * s0 + s1, yi, gpt4)) - best,
                            value(best_per_cell(10 * placebo + s1, yi, gpt4)) - best]  # fmt: skip
            r = np.round(results / len(SEEDS), 4) + 0.0
            lines.append(
                f"| {accuracy} | {lam:g} | {r[0]:.4f} | {r[1]:+.4f} | {r[2]:+.4f} | {r[3]:+.4f} | {r[4]:+.4f} |"
            )
    lines += [
        "",
        "RouterDC's training split (the warm start's prompts), the same seeds pooled: per Yi-34B score s₁ (1–10) and",
        "Mistral's score s₀, the prompts, how often Yi's answer is right, and GPT-4's quality − Yi's (escalating pays",
        "at λ when this exceeds λ × GPT-4's cost: ≈ 0.05 at λ = 10, 0.25 at λ = 50).",
        "",
        "| judge | s₁ | s₀ ≥ 6: n | Yi right | GPT-4 − Yi | s₀ ≤ 5: n | Yi right | GPT-4 − Yi |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for accuracy, counts in cells.items():
        for s in range(10):
            high, low = counts[0, s], counts[1, s]
            lines.append(
                f"| {accuracy} | {s + 1} | {high[0]:.0f} | {high[1] / max(high[0], 1):.2f} | "
                f"{high[2] / max(high[0], 1):+.2f} | {low[0]:.0f} | {low[1] / max(low[0], 1):.2f} | "
                f"{low[2] / max(low[0], 1):+.2f} |"
            )
    (Path(__file__).parent / "results" / "headroom-history-tuning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
