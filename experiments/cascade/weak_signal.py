"""Learned escalation with a judge that says nothing: how often the prompt kinds are learned, per exploration scale v.

    .venv/bin/python experiments/cascade/weak_signal.py > experiments/cascade/results/weak-signal.md

The case of `tests/test_cascade.py::test_learned_escalation_learns_which_kinds_of_prompt_to_escalate`: a cheap
model right on 'easy' prompts 90% of the time and on 'hard' ones 10%, a strong one right 95% of the time,
escalating costs λ·ĉ = 100 · 0.002 = 0.2 (so accept is worth 0.9 / 0.1 and escalate 0.75), and the judge's score
is always 0.5: only the prompt's features tell the kinds apart. Easy and hard prompts alternate for 1,500 chains;
then the learner decides 200 fresh prompts of each kind. A seed counts as learned when it escalates ≥ 90% of the
hard prompts and ≤ 10% of the easy ones (the test's margins). Seeds 0–11 (the test itself uses seed 7), v = 0.05
(the default, tuned for informative judges), 0.1, 0.5, 1 and 2.
"""

from __future__ import annotations

import argparse

import numpy as np

from bandit_router.cascade import CascadeRun, EscalationParams, LearnedEscalation, ModelAnswer
from bandit_router.features import FeatureExtractor
from simulator.report import git_commit

SEEDS = tuple(range(12))
SCALES = (0.05, 0.1, 0.5, 1.0, 2.0)
CHAINS = 1500
P_CHEAP = {"easy": 0.9, "hard": 0.1}
EXTRACTOR = FeatureExtractor()
KINDS = {
    "easy": EXTRACTOR.extract("translate this short greeting please"),
    "hard": EXTRACTOR.extract("prove the theorem about prime gaps rigorously"),
}


def escalation_rates(v: float, seed: int) -> dict[str, float]:
    """The share of fresh prompts of each kind escalated after `CHAINS` chains learned with scale v."""
    rng = np.random.default_rng(seed)
    learner = LearnedEscalation(EscalationParams(v=v))
    for t in range(CHAINS):
        kind = "easy" if t % 2 else "hard"
        run = CascadeRun(["cheap", "strong"], learner, KINDS[kind], 100.0, rng, lambda m: 0.002)
        run.answered(ModelAnswer("cheap", "", 0.0002, 0.1), 0.5)
        quality = float(rng.random() < P_CHEAP[kind])
        if run.next_model() == "strong":
            run.answered(ModelAnswer("strong", "", 0.002, 1.0), None)
            quality = float(rng.random() < 0.95)
        run.result().learn(learner, quality)
    return {
        kind: float(np.mean([learner.decide(ctx, 0, "cheap", 0.5, 0.002, 100.0, rng).escalate for _ in range(200)]))
        for kind, ctx in KINDS.items()
    }


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print("# Learned escalation with an uninformative judge\n")
    print(f"Command: `.venv/bin/python experiments/cascade/weak_signal.py`; seeds 0–11; commit `{git_commit()}`.\n")
    print("| v | seeds learned (hard ≥ 0.9, easy ≤ 0.1) | hard escalated, per seed | easy escalated, per seed |")
    print("|---|---|---|---|")
    for v in SCALES:
        rates = [escalation_rates(v, seed) for seed in SEEDS]
        learned = sum(r["hard"] >= 0.9 and r["easy"] <= 0.1 for r in rates)
        hard = " ".join(f"{r['hard']:.2f}" for r in rates)
        easy = " ".join(f"{r['easy']:.2f}" for r in rates)
        print(f"| {v} | {learned} of {len(SEEDS)} | {hard} | {easy} |")


if __name__ == "__main__":
    main()
