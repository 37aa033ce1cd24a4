"""Does every estimator's interval hold its own point, and cover the truth, when all rewards are ≥ r_min > 0?

`tests/test_estimators.py`'s setting, over 200 seeds: `make_synthetic_bandit(seed=s, temperature=1.0)`, 2,000
rounds from its softmax logger (log seed s + 1000), the ε-greedy-on-the-truth candidate (ε = 0.1), the test's
estimators (IPS, clipped IPS at M = 3, SNIPS, DM and DR with a tabular ridge; 200 bootstrap replicates, DM's
standard error from 100 refits). Rewards are transformed: `0.5 + 0.5r` (every reward ≥ 0.5, as quality − λ·cost
on a service's log usually is: the case where clipped IPS printed 0.618 [1.173, 2.886]) and `r - 0.7` (both
signs), next to the plain r ∈ {0, 1}. V and V_M = E[min(w, M) r] are exact sums over the bandit's contexts.

Per transform and estimator: on how many logs the normal and the bootstrap interval hold the point, cover V,
and (clipped IPS) cover V_M. The tests' floor is 181 of 200 (nominal 95% less 3 binomial standard deviations).

Run: nice .venv/bin/python experiments/offline-evaluation/floored_coverage.py [--seeds 200]
(prints a Markdown table; results/floored_coverage.md holds its output with the commit it ran at)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np

from bandit_router.evaluation import IPS, SNIPS, ClippedIPS, DirectMethod, DoublyRobust, RidgeRewardModel
from bandit_router.evaluation.synthetic import make_synthetic_bandit

N_ROUNDS = 2000
MAX_WEIGHT = 3.0
TABULAR = RidgeRewardModel(ridge=0.1)
ESTIMATORS: dict[str, Any] = {
    "ips": IPS(n_bootstrap=200),
    "clipped-ips (M = 3)": ClippedIPS(max_weight=MAX_WEIGHT, n_bootstrap=200),
    "snips": SNIPS(n_bootstrap=200),
    "dm": DirectMethod(reward_model=TABULAR),
    "dr": DoublyRobust(reward_model=TABULAR, n_bootstrap=200),
}
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "r": lambda r: r,
    "0.5 + 0.5r": lambda r: 0.5 + 0.5 * r,
    "r − 0.7": lambda r: r - 0.7,
}


def run(seeds: int) -> str:
    lines = [
        f"{seeds} seeded logs of {N_ROUNDS} rounds; counts of logs (normal / bootstrap interval)",
        "",
        "| rewards | estimator | holds its point | covers V | covers V_M |",
        "|---|---|---|---|---|",
    ]
    for label, transform in TRANSFORMS.items():
        counts = {name: np.zeros((3, 2), dtype=int) for name in ESTIMATORS}
        for seed in range(seeds):
            bandit = make_synthetic_bandit(seed=seed, temperature=1.0)
            log = bandit.sample(N_ROUNDS, seed=seed + 1000)
            pool = bandit.epsilon_greedy(0.1)
            expected = transform(bandit.expected_reward)
            truth = bandit.value(pool, expected)
            clipped_truth = bandit.clipped_value(pool, MAX_WEIGHT, expected)
            for name, estimator in ESTIMATORS.items():
                est = estimator.estimate(rewards=transform(log.rewards), actions=log.actions,
                                         logged_probability=log.logged_probability, target_pmf=log.target(pool),
                                         features=log.features)
                for col, (lo, hi) in enumerate((est.normal_ci, est.bootstrap_ci)):
                    counts[name][:, col] += [lo <= est.value <= hi, lo <= truth <= hi, lo <= clipped_truth <= hi]
        for name, c in counts.items():
            cells = [f"{c[row, 0]} / {c[row, 1]}" for row in range(3)]
            if not name.startswith("clipped"):
                cells[2] = "—"
            lines.append(f"| {label} | {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    print(run(parser.parse_args().seeds))


if __name__ == "__main__":
    main()
