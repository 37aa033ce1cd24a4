"""Which candidates does the support check warn of on a long-tailed logger, and are their SNIPS estimates off?

A `SyntheticBandit` of 30 equally likely contexts and 100 actions, E[r|j, a] ~ U(0.1, 0.9) (seed 7), whose logger
is 0.98·softmax(s / 0.35) + 0.02/100 over random scores: 62% of its probabilities are below the support floor
(0.001), 2.25% of its mass. Six candidates (pool pmfs): the logger; the logger times exp(0.05·N(0, 1)) per entry,
renormalised; the logger with its tail (μ < 0.001) times 1.01; the logger with its tail halved; the logger plus
0.5 on its least likely action, renormalised; and the deterministic policy on its best tail action. Per candidate,
on 200 logs of 4,000 rounds (seeds 1000 + i): how often SNIPS's 95% normal interval covers the exact value, the
mean error, and how often the support check warns, as `overlap` counts it and as the rule before it did (all of π
wherever π > μ on the tail), with the mean unsupported mass of each.

Run: nice .venv/bin/python experiments/offline-evaluation/support_near_logger.py
(results/support_near_logger.md holds its output with the commit it ran at)
"""

from __future__ import annotations

import argparse

import numpy as np

from bandit_router.evaluation import SNIPS
from bandit_router.evaluation.overlap import OverlapThresholds, overlap
from bandit_router.evaluation.synthetic import SyntheticBandit

CONTEXTS, ACTIONS, ROUNDS, LOGS = 30, 100, 4000, 200


def _normalised(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / x.sum(axis=1, keepdims=True))


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # no options: --help
    rng = np.random.default_rng(7)
    expected = rng.uniform(0.1, 0.9, size=(CONTEXTS, ACTIONS))
    scores = rng.normal(size=(CONTEXTS, ACTIONS)) / 0.35
    soft = _normalised(np.exp(scores - scores.max(axis=1, keepdims=True)))
    mu = 0.98 * soft + 0.02 / ACTIONS
    world = SyntheticBandit(np.full(CONTEXTS, 1.0 / CONTEXTS), np.eye(CONTEXTS), expected, mu)
    floor = OverlapThresholds().support_floor
    tail = mu < floor
    print(f"logger: {tail.mean():.0%} of its probabilities < {floor:g}, {(mu * tail).sum(axis=1).mean():.2%} of "
          "its mass\n")
    rows = np.arange(CONTEXTS)
    plus_half = mu.copy()
    plus_half[rows, mu.argmin(axis=1)] += 0.5
    deterministic = np.zeros_like(mu)
    deterministic[rows, np.where(tail, expected, -1.0).argmax(axis=1)] = 1.0
    candidates = {
        "the logger": mu,
        "logger · exp(0.05 N(0, 1))": _normalised(mu * np.exp(0.05 * np.random.default_rng(1).normal(size=mu.shape))),
        "logger, tail · 1.01": _normalised(np.where(tail, 1.01 * mu, mu)),
        "logger, tail halved": _normalised(np.where(tail, 0.5 * mu, mu)),
        "+0.5 on its least likely action": _normalised(plus_half),
        "deterministic on a tail action": deterministic,
    }
    print("| candidate | SNIPS coverage | mean error | warned (excess rule) | mass | warned (all of π where π > μ) | "
          "mass |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, pool in candidates.items():
        truth = world.value(pool)
        covered, errors, warned, mass, warned_before, mass_before = 0, [], 0, [], 0, []
        for i in range(LOGS):
            log = world.sample(ROUNDS, seed=1000 + i)
            pi = log.target(pool)
            est = SNIPS().estimate(rewards=log.rewards, actions=log.actions,
                                   logged_probability=log.logged_probability, target_pmf=pi)
            covered += bool(est.ci_low <= truth <= est.ci_high)
            errors.append(est.value - truth)
            ov = overlap(log.actions, log.logged_probability, log.logged_pmf, pi)
            warned += any(w.startswith("support violation") for w in ov.warnings)
            mass.append(ov.unsupported_mass)
            before = float((pi * ((log.logged_pmf < floor) & (pi > log.logged_pmf))).sum(axis=1).mean())
            warned_before += before > OverlapThresholds().max_unsupported_mass
            mass_before.append(before)
        undefined = int(np.isnan(errors).sum())  # SNIPS with no logged draw on the candidate's choices
        error = f"{np.nanmean(errors):+.4f}" + (f" ({undefined} undefined)" if undefined else "")
        print(f"| {name} | {covered}/{LOGS} | {error} | {warned}/{LOGS} | {np.mean(mass):.2%} | "
              f"{warned_before}/{LOGS} | {np.mean(mass_before):.2%} |")


if __name__ == "__main__":
    main()
