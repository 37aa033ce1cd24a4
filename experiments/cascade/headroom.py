"""How much room RouteLLM's two-model chain leaves above the best fixed threshold: the best rules in hindsight that
read more than a threshold does, on the same judge's scores as `run.py` (seeds 0–4, the split's scored half).

    .venv/bin/python experiments/cascade/headroom.py      # writes results/headroom.md

With one escalation (Mixtral → GPT-4) the step "escalate when the score is below t" is already the best rule
that reads the score alone whenever P(the cheap answer is right | score) rises with the score; what the learner
can add is the prompt (here: its task, GSM8K / MMLU / MT-Bench) and the price of escalating this prompt. Rules,
each chosen per (λ, judge) on the scored prompts with their outcomes known (upper bounds, as the threshold is):

- *any rule on the score*: escalate the scores whose mean reward gain is positive;
- *task × score*: the same per (task, score) cell.
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

SEEDS = (0, 1, 2, 3, 4)


def main() -> None:
    setup = SETUPS["routellm"]
    env = setup["env"].build()
    cheap, strong = (env.model_names.index(m) for m in setup["chain"].split(">"))
    rows = env.eval_rows
    extractor = FeatureExtractor()
    tokens = np.array([env.context(int(r), extractor).input_tokens for r in rows], dtype=np.float64)
    qa, qe = env.quality[rows, cheap], env.quality[rows, strong]
    ca, ce = env.cost_usd[rows, cheap], env.cost_usd[rows, strong]
    judge_cost = JUDGE_PRICE * (tokens + 250.0) / 1e6
    task = env.domains[rows]
    out = [
        "RouteLLM (Mixtral → GPT-4), the split's scored half, seeds 0–4: mean reward per request of the best fixed",
        "threshold in hindsight, and what each richer rule chosen in hindsight adds to it.",
        "",
        "| judge | λ | best threshold | any rule on the score | task × score |",
        "|---|---|---|---|---|",
    ]
    for accuracy in JUDGES:
        judge = SimulatedJudge(noise=SimulatedJudge.noise_for(accuracy), error=0.0)
        scores = []
        for seed in SEEDS:
            draws = SimulatedJudge.draws(len(env.quality), len(env.model_names), seed)[rows, cheap]
            scores.append([round(9 * (parse_judge_score(judge.reply_to(float(q), *d)) or 0.0)) for q, d in
                           zip(qa, draws, strict=True)])  # fmt: skip
        for lam in setup["cost_weights"]:
            results = np.zeros(3)
            for score in np.array(scores):
                accept = qa - lam * (ca + judge_cost)
                gain = qe - lam * ce - qa
                best = max(float(np.mean(accept + gain * (score < t))) for t in range(11))
                by_score = sum(max(float(gain[score == s].sum()), 0.0) for s in range(10))
                cells = [(task == k) & (score == s) for k in np.unique(task) for s in range(10)]
                by_cell = sum(max(float(gain[c].sum()), 0.0) for c in cells)
                mean = float(accept.mean())
                results += [best, mean + by_score / len(qa) - best, mean + by_cell / len(qa) - best]
            r = np.round(results / len(SEEDS), 4) + 0.0  # + 0.0: no "-0.0000" from rounding
            out.append(f"| {accuracy} | {lam:g} | {r[0]:.4f} | {r[1]:+.4f} | {r[2]:+.4f} |")
    (Path(__file__).parent / "results" / "headroom.md").write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
